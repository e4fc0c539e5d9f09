//! The gateway's decision on another engine: hyper 1.x's server and hyper-util's pooled client
//! (as in `hyper_proxy.rs`) around `edge::decision::Decider` (route, rules, token, user state,
//! identity headers), assembled by the gateway's start-up code. Nothing of the decision is
//! copied: `bench/proxy.sh` (e2) against (e) measures the engine alone. A measuring stick: no
//! TLS, HTTP/2, upgrades, own endpoints (501), head deadlines, health checks or hand-over.
//!
//! `cargo run --release --example gateway_hyper -- CONFIG.toml` serves `server.listen` on
//! `server.threads` threads, each a current-thread runtime.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TE, TRAILER, UPGRADE};
use http::HeaderValue;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora::services::background::BackgroundService;
use sentinel_gateway::config::{Config, Sources};
use sentinel_gateway::edge::decision::{Decided, Decider, Head, Next};
use sentinel_gateway::edge::identity;
use sentinel_gateway::ops::server;
use sentinel_gateway::own::api::Reply;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;
type Upstreams = Client<HttpConnector, Incoming>;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONN: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [CONNECTION, TE, TRAILER, UPGRADE, KEEP_ALIVE, PROXY_CONN] {
        headers.remove(name);
    }
}

/// One request: the decision, then the answer or the upstream's.
async fn handle(
    decider: &Decider,
    upstreams: &Upstreams,
    (peer, peer_header): (IpAddr, HeaderValue),
    req: Request<Incoming>,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let mut decided = Decided::default();
    let mut next = decider.decide(&Head::of(&parts, Some(peer)), &mut decided);
    if let Next::FetchUser(pending) = next {
        next = decider.fetch_user(pending, &mut decided).await;
    }
    let (host, cleanup) = match next {
        Next::Proxy { host, cleanup } => (host, cleanup),
        Next::Reply(reply) => return answer(reply, decider.response_extras(&decided)),
        Next::Preflight(reply) => {
            let extra = vec![(identity::REQUEST_ID_NAME, decided.request_id_text())];
            return answer(reply, extra);
        }
        Next::Own(_) | Next::FetchUser(_) => return status(StatusCode::NOT_IMPLEMENTED),
    };
    let (identity, headers) = ((Some(peer), peer_header), &mut parts.headers);
    if decider
        .upstream_headers(headers, &decided, identity, host, cleanup)
        .is_err()
    {
        return status(StatusCode::BAD_REQUEST);
    }
    let Some(upstream) = decided
        .route
        .and_then(|i| decider.edge.routes.get(i)?.upstreams.select())
        .and_then(|peer| peer._address.as_inet().copied())
    else {
        return status(StatusCode::BAD_GATEWAY);
    };
    let target = decided.upstream_target(&parts.uri).unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    });
    match format!("http://{upstream}{target}").parse() {
        Ok(uri) => parts.uri = uri,
        Err(_) => return status(StatusCode::BAD_GATEWAY),
    }
    strip_hop_by_hop(&mut parts.headers);
    match upstreams.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            decider.answer_headers(&mut parts.headers, &decided);
            Response::from_parts(parts, body.boxed())
        }
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

/// A gateway answer as the pingora engine writes it: its headers, length and type, extras.
fn answer(reply: Reply, extra: Vec<(&'static str, String)>) -> Response<Body> {
    let body = Full::new(reply.body.clone()).map_err(|n| match n {});
    let mut resp = Response::new(body.boxed());
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or_default();
    let headers = resp.headers_mut();
    for (name, value) in reply.headers.into_iter().chain(extra) {
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.append(name, value);
        }
    }
    if reply.status != 204 {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(reply.body.len()));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    }
    resp
}

fn status(code: StatusCode) -> Response<Body> {
    let detail = serde_json::json!({ "detail": code.canonical_reason() });
    answer(Reply::json(code.as_u16(), &detail), Vec::new())
}

/// One thread: its share of the listener, its pool, a task per connection.
async fn serve(listener: std::net::TcpListener, decider: Arc<Decider>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let upstreams: Upstreams = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    loop {
        let (stream, addr) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (decider, upstreams) = (Arc::clone(&decider), upstreams.clone());
        let peer = (addr.ip(), identity::shared_ip_header(addr.ip()));
        tokio::task::spawn_local(async move {
            let service = hyper::service::service_fn(|req| {
                let (decider, upstreams, peer) = (&decider, &upstreams, peer.clone());
                async move { Ok::<_, Infallible>(handle(decider, upstreams, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let file = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "conf/sentinel.toml".into());
    let config = Config::load(&Sources {
        file: file.into(),
        file_required: true,
        dotenv: ".env".into(),
        env: std::env::vars().collect(),
    })?;
    server::migrate(&config)?;
    let server::Assembly {
        app, edge, changes, ..
    } = server::assemble(&config)?;
    server::open_at_once(&config, &app)?;
    let decider = Arc::new(Decider { app, edge });
    // The user cache answers from memory only while change notifications flow.
    on_own_runtime(move || async move {
        let (_keep, shutdown) = tokio::sync::watch::channel(false);
        changes.start(shutdown).await;
        Ok(())
    });
    let listener = std::net::TcpListener::bind(config.listeners()?.public[0])?;
    listener.set_nonblocking(true)?;
    let mut threads = Vec::new();
    for _ in 0..config.server.threads.max(1) {
        let (listener, decider) = (listener.try_clone()?, Arc::clone(&decider));
        threads.push(on_own_runtime(move || serve(listener, decider)));
    }
    for thread in threads {
        if let Ok(Err(e)) = thread.join() {
            anyhow::bail!("gateway_hyper: {e}");
        }
    }
    Ok(())
}

/// A thread running `task` on a current-thread runtime of its own (as pingora's threads do).
fn on_own_runtime<F: std::future::Future<Output = std::io::Result<()>>>(
    task: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        tokio::task::LocalSet::new().block_on(&runtime, task())
    })
}
