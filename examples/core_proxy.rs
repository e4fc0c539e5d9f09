//! The layer below pingora-proxy, measured: a passthrough HTTP/1 proxy written directly on
//! pingora-core's sessions, for `bench/proxy.sh` to run beside the bare pingora-proxy example
//! (`bare_proxy.rs`). It answers one question: how fast could a gateway on Pingora be if it
//! dropped pingora-proxy's per-request machinery and kept only pingora-core's HTTP/1 codec.
//!
//! One request at a time, in order: read the request head, send it upstream, relay the request
//! body, then the response head and body. No upgrades, no retries of a stale pooled connection,
//! no error pages, no full duplex: a measuring stick, not a proxy to deploy.
//!
//! `cargo run --release --example core_proxy -- LISTEN UPSTREAM [THREADS] [pool|stash]`
//!
//! `pool` (the default) keeps idle upstream connections in pingora's connection pool, which
//! spawns a watcher task for every connection it takes back; `stash` in a plain per-thread
//! list instead, to show what the pool itself costs. The list never notices an upstream
//! closing an idle connection: it only reuses connections idle for under `STASH_IDLE`, far
//! below the benchmark upstream's keep-alive time (nginx: 75 s), and is fit for nothing else.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::connectors::http::v1::Connector;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;

mod common;

/// The same allocator as the gateway and the bare proxy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long an idle connection may wait in the stash and still be reused.
const STASH_IDLE: Duration = Duration::from_secs(2);

thread_local! {
    /// Idle upstream connections of this worker thread, in `stash` mode, the most recently
    /// used last, each with the time it went idle.
    static STASH: RefCell<Vec<(Stream, Instant)>> = const { RefCell::new(Vec::new()) };
}

struct CoreProxy {
    peer: HttpPeer,
    connector: Connector,
    stash: bool,
}

impl CoreProxy {
    async fn upstream(&self) -> Option<HttpSession> {
        if self.stash {
            let fresh = STASH.with(|idle| {
                let mut idle = idle.borrow_mut();
                let (stream, since) = idle.pop()?;
                if since.elapsed() < STASH_IDLE {
                    return Some(stream);
                }
                idle.clear(); // everything below it waited even longer
                None
            });
            if let Some(stream) = fresh {
                return Some(HttpSession::new_with_options(stream, &self.peer));
            }
        }
        let (session, _reused) = self.connector.get_http_session(&self.peer).await.ok()?;
        Some(session)
    }

    async fn release(&self, mut upstream: HttpSession) {
        if !self.stash {
            self.connector
                .release_http_session(upstream, &self.peer, None)
                .await;
            return;
        }
        upstream.respect_keepalive();
        if let Some(stream) = upstream.reuse().await {
            STASH.with(|idle| idle.borrow_mut().push((stream, Instant::now())));
        }
    }

    /// One exchange; `None` when either side failed (the client's connection is then closed).
    async fn exchange(&self, session: &mut ServerSession) -> Option<()> {
        let mut upstream = self.upstream().await?;
        let mut request = session.req_header().clone();
        request.remove_header(&http::header::CONNECTION);
        upstream
            .write_request_header(Box::new(request))
            .await
            .ok()?;
        while let Some(chunk) = session.read_request_body().await.ok()? {
            upstream.write_body(&chunk).await.ok()?;
        }
        upstream.finish_body().await.ok()?;
        upstream.read_response().await.ok()?;
        let mut response = upstream.resp_header()?.clone();
        response.remove_header(&http::header::CONNECTION);
        session
            .write_response_header(Box::new(response))
            .await
            .ok()?;
        while let Some(chunk) = upstream.read_body_bytes().await.ok()? {
            session.write_response_body(chunk, false).await.ok()?;
        }
        session.finish_body().await.ok()?;
        self.release(upstream).await;
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for CoreProxy {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.read_request().await.ok()? {
            return None;
        }
        self.exchange(&mut session).await?;
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok()??;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (
        args.get(1),
        args.get(2).and_then(|u| u.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: core_proxy LISTEN UPSTREAM [THREADS] [pool|stash]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let stash = match args.get(4).map(String::as_str) {
        None | Some("pool") => false,
        Some("stash") => true,
        Some(other) => {
            eprintln!("core_proxy: unknown mode {other:?}, expected pool or stash");
            std::process::exit(2);
        }
    };
    // The gateway's own server settings, as `bare_proxy ... tuned` uses them.
    let mut server = common::server("core-proxy", threads, true);
    let app = CoreProxy {
        peer: HttpPeer::new(upstream, false, String::new()),
        connector: Connector::new(None),
        stash,
    };
    let mut service = Service::new("core proxy".to_string(), app);
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
