//! The connection front: HTTP/1 keep-alive handling around pingora's proxy, with a deadline on
//! each request head.
//!
//! Pingora times out each *read* of a request head (60 s on a new connection, the keep-alive
//! time after that), not the head as a whole, so a client trickling one byte a minute holds a
//! connection and its task for as long as it likes. Here every head must be complete within
//! `header_timeout` of the connection opening, or within `keepalive + header_timeout` of the
//! previous response on a kept-alive connection; past that the connection is dropped without an
//! answer (as nginx does for `client_header_timeout`).
//!
//! The proxy reports "head received" through the connection user context it hands to
//! [`ProxyHttp::on_connection_reuse`](pingora::proxy::ProxyHttp::on_connection_reuse) right after
//! parsing a head: [`HeadSeen`] is that context.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::proxy::Gateway;

/// Set by the proxy once the current request's head has been parsed.
#[derive(Debug, Default)]
pub struct HeadSeen(AtomicBool);

impl HeadSeen {
    /// Called from `on_connection_reuse` with the context this front attached.
    pub fn mark(context: &(dyn Any + Send + Sync)) {
        if let Some(seen) = context.downcast_ref::<Arc<HeadSeen>>() {
            seen.0.store(true, Ordering::Release);
        }
    }

    fn reset(&self) {
        self.0.store(false, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Pingora's HTTP proxy behind a per-request head deadline.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    header_timeout: Duration,
    keepalive: Duration,
}

impl Front {
    pub fn new(proxy: HttpProxy<Gateway>, header_timeout: Duration, keepalive: Duration) -> Front {
        Front {
            proxy: Arc::new(proxy),
            header_timeout,
            keepalive,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    /// Pingora's own HTTP/1 loop (`impl ServerApp for HttpServerApp`, without h2c and TLS, which
    /// the gateway does not configure), with the head deadline around each request.
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.keepalive.as_secs()));
        }
        let seen = Arc::new(HeadSeen::default());
        let mut budget = self.header_timeout;
        // One timer per connection, moved only when it fires (re-arming it for every request
        // would cost a timer-wheel insertion and removal per request).
        let timer = tokio::time::sleep(budget);
        tokio::pin!(timer);
        loop {
            let started = tokio::time::Instant::now();
            seen.reset();
            session.set_connection_user_context(Some(Box::new(Arc::clone(&seen))));
            let request = self.proxy.process_new_http(session, shutdown);
            tokio::pin!(request);
            let reused = loop {
                tokio::select! {
                    biased;
                    reused = &mut request => break reused,
                    () = &mut timer => {
                        let now = tokio::time::Instant::now();
                        let deadline = started + budget;
                        if seen.is_set() {
                            // The head is in; look again one budget from now.
                            timer.as_mut().reset(now + budget);
                        } else if now >= deadline {
                            tracing::debug!(?budget, "request head not complete in time; closing");
                            return None;
                        } else {
                            timer.as_mut().reset(deadline);
                        }
                    }
                }
            };
            let (stream, settings) = reused?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            budget = self.keepalive + self.header_timeout;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
