//! A tiny upstream for trying the gateway out and for its tests. By default it answers with JSON
//! describing what it received — method, path, headers (in order, duplicates kept) and the body
//! size, counted as it streams in — so you can see the identity headers the gateway sets.
//!
//! `demo-upstream [ADDR]` (default 127.0.0.1:9000). Query parameters:
//! - `delay_ms=N`: answer after N ms;
//! - `bytes=N`: answer with N bytes of body instead, streamed in 64 KiB chunks.
//!
//! A WebSocket upgrade (`Upgrade: websocket`) is accepted and every byte sent on the upgraded
//! connection is echoed back as it arrives. `GET /__requests` (asked directly, not through the
//! gateway) answers how many other requests it has served, for tests that must prove a request
//! never arrived.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, Infallible>;

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
    })
}

fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

fn upgrade(mut req: Request<Incoming>) -> Response<Body> {
    let accept = websocket_accept(
        req.headers()
            .get("sec-websocket-key")
            .map(|v| v.as_bytes())
            .unwrap_or_default(),
    );
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(&mut req).await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = hyper::header::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn handle(req: Request<Incoming>, server: &str) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/__requests" {
        let n = SERVED.load(std::sync::atomic::Ordering::SeqCst);
        return Ok(Response::new(Full::new(Bytes::from(n.to_string())).boxed()));
    }
    SERVED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let is_websocket = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_websocket {
        return Ok(upgrade(req));
    }
    if let Some(ms) = query_u64(&req, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(total) = query_u64(&req, "bytes") {
        const CHUNK: u64 = 64 * 1024;
        let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
        let chunks = stream::iter((0..total.div_ceil(CHUNK)).map(move |i| {
            let len = CHUNK.min(total - i * CHUNK) as usize;
            Ok::<_, Infallible>(Frame::data(chunk.slice(..len)))
        }));
        let mut resp = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
        resp.headers_mut()
            .insert("content-length", hyper::header::HeaderValue::from(total));
        return Ok(resp);
    }
    let method = req.method().as_str().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    // Count the body as it streams in, never holding it.
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    let json = serde_json::json!({
        "server": server,
        "method": method,
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())).boxed());
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("demo-upstream listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let server = addr.clone();
        tokio::spawn(async move {
            let service = service_fn(|req| {
                let server = server.clone();
                async move { handle(req, &server).await }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
