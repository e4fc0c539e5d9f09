//! The gateway's decision on another engine, measured: hyper 1.x's server and hyper-util's
//! pooled client (as in `hyper_proxy.rs`) around the gateway's own decision
//! (`edge::decision::Decider`: route, rules, token, user state, identity headers), assembled
//! from the configuration by the gateway's start-up code. Nothing of the decision is copied:
//! what `bench/proxy.sh` row (e2) measures against (e) is the engine alone. A measuring stick,
//! not a proxy to deploy: no TLS, HTTP/2, upgrades, own endpoints (501), head deadlines,
//! health checks or graceful upgrade.
//!
//! `cargo run --release --example gateway_hyper -- CONFIG.toml`: `server.listen` on
//! `server.threads` threads, each a current-thread runtime with a SO_REUSEPORT listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderValue;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sentinel_gateway::config::{Config, Sources};
use sentinel_gateway::edge::decision::{Decided, Decider, Head, Next};
use sentinel_gateway::edge::identity;
use sentinel_gateway::ops::server;
use sentinel_gateway::own::api::Reply;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;
type Upstreams = Client<HttpConnector, Incoming>;

/// Removes the headers that belong to one connection, not to the message (RFC 9110 §7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in "connection keep-alive proxy-connection te trailer upgrade".split(' ') {
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
    let identity = (Some(peer), peer_header);
    if let Err(e) = decider.upstream_headers(&mut parts.headers, &decided, identity, host, cleanup)
    {
        eprintln!("gateway_hyper: {e}");
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
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream.to_string())
        .path_and_query(target)
        .build()
    else {
        return status(StatusCode::BAD_GATEWAY);
    };
    parts.uri = uri;
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
    let detail = code.canonical_reason().unwrap_or("Error");
    answer(
        Reply::json(code.as_u16(), &serde_json::json!({ "detail": detail })),
        Vec::new(),
    )
}

/// One thread: its listener on `listen` (SO_REUSEPORT), its pool, a task per connection.
async fn serve(listen: SocketAddr, decider: Arc<Decider>) -> std::io::Result<()> {
    let socket = match listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(4096)?;
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
                async move {
                    let resp = handle(decider, upstreams, peer, req).await;
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let usage = || anyhow::anyhow!("usage: gateway_hyper CONFIG.toml");
    let file = std::env::args().nth(1).ok_or_else(usage)?;
    let config = Config::load(&Sources {
        file: file.into(),
        file_required: true,
        dotenv: ".env".into(),
        env: std::env::vars().collect(),
    })?;
    server::migrate(&config)?;
    let server::Assembly { app, edge, .. } = server::assemble(&config)?;
    server::open_at_once(&config, &app)?;
    let decider = Arc::new(Decider { app, edge });
    let listen = config.listeners()?.public[0];
    let threads: Vec<_> = (0..config.server.threads.max(1))
        .map(|_| {
            let decider = Arc::clone(&decider);
            std::thread::spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                tokio::task::LocalSet::new().block_on(&runtime, serve(listen, decider))
            })
        })
        .collect();
    for thread in threads {
        if let Ok(Err(e)) = thread.join() {
            anyhow::bail!("gateway_hyper: {e}");
        }
    }
    Ok(())
}
