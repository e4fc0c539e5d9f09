//! The framework's own ceiling: a Pingora passthrough proxy with no logic at all, for
//! `bench/proxy.sh` to compare the gateway against.
//!
//! `cargo run --release --example bare_proxy -- LISTEN UPSTREAM [THREADS] [tuned]`
//!
//! With `tuned`, it runs with the server settings the gateway itself uses instead of pingora's
//! defaults: no work stealing (a single-threaded scheduler per thread), tokio's timers for
//! every timeout, and no downstream modules. The gateway compared with this shows what its own
//! work costs; compared with the default, what it costs plus what those settings gain.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};

mod common;

/// The same allocator as the gateway, so that the comparison measures the gateway's own work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    tuned: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut HttpModules) {
        if !self.tuned {
            // Pingora's default: its response compression module, at level 0.
            modules.add_module(
                pingora::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2).and_then(|u| u.parse().ok()))
    else {
        eprintln!("usage: bare_proxy LISTEN UPSTREAM [THREADS] [tuned]");
        std::process::exit(2);
    };
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let tuned = args.get(4).is_some_and(|a| a == "tuned");
    let mut server = common::server("bare-proxy", threads, tuned);
    let mut service = http_proxy_service(&server.configuration, Bare { upstream, tuned });
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
