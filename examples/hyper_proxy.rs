//! Another engine, measured: a passthrough HTTP/1 proxy on hyper 1.x — hyper's server
//! connection and hyper-util's pooled client — for `bench/proxy.sh` to run beside the Pingora
//! passthroughs (`bare_proxy.rs`, `core_proxy.rs`), nginx and HAProxy. It answers: how fast is
//! the engine the design card names, on this machine, doing nothing but relaying.
//!
//! Each request is sent upstream with its head as it came (minus hop-by-hop headers) and its
//! body streamed; the answer likewise. Upstream connections are kept alive in hyper-util's
//! pool (per thread: one client per runtime). No upgrades, no error pages beyond a bare 502: a
//! measuring stick, not a proxy to deploy.
//!
//! `cargo run --release --example hyper_proxy -- LISTEN UPSTREAM [THREADS]`
//!
//! With THREADS > 1, each thread runs a current-thread runtime with its own listener on the
//! same port (SO_REUSEPORT), as the gateway's threads each run a scheduler of their own.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::header::{HeaderName, CONNECTION};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The same allocator as the gateway and the other passthroughs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
];

async fn relay(
    client: Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream.to_string())
        .path_and_query(path)
        .build()
    else {
        return Ok(bad_gateway());
    };
    *req.uri_mut() = uri;
    for name in &HOP_BY_HOP {
        req.headers_mut().remove(name);
    }
    match client.request(req).await {
        Ok(mut resp) => {
            for name in &HOP_BY_HOP {
                resp.headers_mut().remove(name);
            }
            Ok(resp.map(BodyExt::boxed))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// One thread's proxy: a listener on `listen` (shared with the other threads by
/// SO_REUSEPORT), a client with its own pool, every connection a task on this thread.
async fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
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
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::task::spawn_local(async move {
            let service = service_fn(move |req| relay(client.clone(), upstream, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (
        args.get(1).and_then(|l| l.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|u| u.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: hyper_proxy LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads: usize = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                let local = tokio::task::LocalSet::new();
                if let Err(e) = local.block_on(&runtime, serve(listen, upstream)) {
                    eprintln!("hyper_proxy: {e}");
                    std::process::exit(1);
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}
