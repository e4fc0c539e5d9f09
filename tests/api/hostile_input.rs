//! Malformed and hostile bodies: always a clear 4xx in FastAPI's shape, never a 500.

use crate::helpers::*;

async fn post(app: &TestApp, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req = app.client.post(app.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    Answer::of(req.send().await.unwrap()).await
}

#[tokio::test]
async fn malformed_bodies_never_cause_a_server_error() {
    let app = TestApp::spawn().await;
    let (token, _) = app
        .registered("target@example.com", "TargetPassword1!")
        .await;
    let json = Some("application/json");
    let form = Some("application/x-www-form-urlencoded");
    let bodies: Vec<(&str, Option<&str>, Vec<u8>, u16)> = vec![
        ("/auth/register", json, b"{\"email\": \"\xff\xfe\"}".to_vec(), 400),
        ("/auth/register", json, b"NaN".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"a@b.com\",\"password\":\"x\",\"full_name\":1e999}".to_vec(), 422),
        ("/auth/register", json, "[".repeat(60_000).into_bytes(), 422),
        ("/auth/register", json, b"{\"email\":\"nul\\u0000@example.com\",\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"ok@example.com\",\"password\":\"Password1!\",\"full_name\":\"a\\u0000b\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":\"\xe2\x80\xae@example.com\",\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", json, b"{\"email\":{\"$ne\":null},\"password\":\"Password1!\"}".to_vec(), 422),
        ("/auth/register", Some("application/x-www-form-urlencoded"), b"email=a@b.com&password=Password1!".to_vec(), 422),
        ("/auth/register", Some("no-slash"), b"{}".to_vec(), 422),
        ("/auth/token", Some("multipart/form-data"), b"--x\r\n".to_vec(), 400),
        ("/auth/token", Some("multipart/form-data; boundary=\"\""), b"--\r\n".to_vec(), 400),
        ("/auth/token", Some("multipart/form-data; boundary=zz"), b"--zz\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n\xff\xff\r\n--zz--\r\n".to_vec(), 400),
        ("/auth/token", form, b"username=%ff%fe&password=%00".to_vec(), 401),
        ("/auth/token", form, b"%%%=&&&==".to_vec(), 422),
        ("/auth/token", Some("text/plain"), b"username=a&password=b".to_vec(), 422),
        ("/auth/token", None, b"".to_vec(), 422),
    ];
    for (path, ct, body, expected) in bodies {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).to_string();
        let a = post(&app, path, ct, body).await;
        assert_eq!(a.status, expected, "{path} {ct:?} {shown:?}: {}", a.text);
        assert!(a.json().get("detail").is_some(), "{shown:?}");
    }
    // Nothing was created by any of it, and the real user still works.
    let count: i64 = app
        .db
        .client()
        .await
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    assert_eq!(app.me(&token).await.status(), 200);
}

#[tokio::test]
async fn oversized_bodies_get_413_before_being_read() {
    let app = TestApp::spawn().await;
    let big = vec![b'a'; 2 * 1024 * 1024];
    let a = post(
        &app,
        "/auth/register",
        Some("application/json"),
        big.clone(),
    )
    .await;
    assert_eq!(
        (a.status, a.text.as_str()),
        (413, r#"{"detail":"Request body too large"}"#)
    );
    // Chunked (no Content-Length) is counted as it arrives.
    let stream = futures_util::stream::iter(
        big.chunks(16 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = app
        .client
        .post(app.url("/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    assert_eq!(app.status("/health").await, 200);
}

#[tokio::test]
async fn raw_protocol_garbage_is_refused_and_the_gateway_stays_up() {
    let app = TestApp::spawn().await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST /auth/token HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        let answer = raw(app.port, request).await;
        assert!(!answer.contains(" 500 "), "{answer}");
    }
    assert_eq!(app.status("/health").await, 200);
}
