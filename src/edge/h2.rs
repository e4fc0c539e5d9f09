//! HTTP/2 connections (chosen by ALPN on the TLS listener), with the deadlines and budgets the
//! HTTP/1 front keeps.
//!
//! Pingora's own HTTP/2 loop keeps a connection for as long as the client likes: no deadline on
//! the preface, none on idleness, and no bound on streams a client opens and resets. This loop
//! drives the same pingora pieces (handshake, stream acceptance, one proxy session per stream
//! through the same hooks) with:
//! - the client preface and settings due within `server.header_timeout_ms` of the connection
//!   (the TLS handshake before it is bounded by the front's handshake deadline);
//! - a connection with no stream in progress closed after `server.keepalive_seconds` (pings do
//!   not count: only requests keep a connection);
//! - each stream's writes bounded by `server.send_timeout_ms`, as on HTTP/1, so a stream the
//!   client never reads gives its upstream connection back;
//! - a budget of streams the client cancels (RST_STREAM) before their answer: past
//!   [`CANCELLED_STREAMS`] more than it let finish, the connection gets GOAWAY
//!   (`ENHANCE_YOUR_CALM`). Each cancelled stream still cost an upstream request, so this is
//!   what bounds the work one connection can send upstream (the "rapid reset" attack after
//!   acceptance; h2 itself bounds resets before acceptance);
//! - malformed streams counted across the connection (pingora's own loop allows 32).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pingora::apps::HttpServerApp;
use pingora::protocols::http::v2::server::{self as v2, H2Accept, HttpSession};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Digest, Stream};
use pingora::server::ShutdownWatch;
use tokio::sync::Notify;

use crate::edge::front::{ClientTimeouts, Connection, Deadlines, Front};

/// How many more streams a client may cancel before their answer than it lets finish.
pub const CANCELLED_STREAMS: u64 = 100;

/// Malformed streams (refused during acceptance) allowed per connection, as pingora allows.
const MALFORMED_STREAMS: usize = 32;

/// What the streams of one connection did, counted by the proxy as each ends.
#[derive(Default)]
pub struct Streams {
    active: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    /// A stream ended (the loop looks at idleness and the cancel budget again).
    ended: Notify,
}

impl Streams {
    fn over_budget(&self) -> bool {
        let cancelled = self.cancelled.load(Ordering::Relaxed);
        cancelled > CANCELLED_STREAMS + self.completed.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    /// The connection of the HTTP/2 stream a task serves.
    static STREAMS: Arc<Streams>;
}

/// Called by the proxy as each request ends: on an HTTP/2 stream, whether the client gave it
/// up before its answer was complete. Nothing on HTTP/1.
pub fn stream_ended(cancelled: bool) {
    let _ = STREAMS.try_with(|streams| {
        let counter = if cancelled {
            &streams.cancelled
        } else {
            &streams.completed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    });
}

/// A stream in progress; ends its count when dropped (however its task ends).
struct Active(Arc<Streams>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.ended.notify_one();
    }
}

/// Ready when the sweeper has found the connection's deadline passed, or it was shut out.
struct CutOff<'a>(&'a Connection);

impl Future for CutOff<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        // The sweeper wakes the connection's task (this one) through the waker it was given.
        if self.0.cut_off() || self.0.is_shut() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// Serves one HTTP/2 connection until it closes, is idle too long, or misbehaves.
pub async fn serve(
    front: &Arc<Front>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    conn: Arc<Connection>,
    deadlines: &'static Deadlines,
    timeouts: ClientTimeouts,
) {
    let digest = Arc::new(Digest {
        ssl_digest: stream.get_ssl_digest(),
        timing_digest: stream.get_timing_digest(),
        proxy_digest: stream.get_proxy_digest(),
        socket_digest: stream.get_socket_digest(),
    });
    conn.await_head(deadlines, timeouts.head);
    let mut h2 = tokio::select! {
        handshake = v2::handshake(stream, None) => match handshake {
            Ok(h2) => h2,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 handshake failed");
                return;
            }
        },
        () = CutOff(&conn) => {
            tracing::debug!("HTTP/2 preface not in time; closing");
            return;
        }
    };
    let streams = Arc::new(Streams::default());
    let mut shutdown = shutdown.clone();
    let mut draining = false;
    let mut malformed = 0usize;
    loop {
        if streams.active.load(Ordering::Relaxed) == 0 {
            conn.await_head(deadlines, timeouts.keepalive);
        } else {
            conn.head_in();
        }
        let accepted = tokio::select! {
            biased;
            changed = shutdown.changed(), if !draining => {
                if changed.is_err() || *shutdown.borrow() {
                    h2.graceful_shutdown();
                    draining = true;
                }
                continue;
            }
            () = CutOff(&conn) => {
                tracing::debug!("HTTP/2 connection idle too long; closing");
                return;
            }
            () = streams.ended.notified() => {
                if streams.over_budget() {
                    tracing::warn!(
                        cancelled = streams.cancelled.load(Ordering::Relaxed),
                        completed = streams.completed.load(Ordering::Relaxed),
                        "HTTP/2 client cancelled too many streams; closing the connection"
                    );
                    h2.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    // Flush the GOAWAY (and let streams in progress see the end) briefly.
                    let flush = async {
                        while let Ok(Some(_)) = HttpSession::from_h2_conn(&mut h2, digest.clone()).await {}
                    };
                    let _ = tokio::time::timeout(Duration::from_secs(1), flush).await;
                    return;
                }
                continue;
            }
            accepted = HttpSession::from_h2_conn(&mut h2, digest.clone()) => accepted,
        };
        match accepted {
            Ok(Some(H2Accept::Session(session))) => {
                streams.active.fetch_add(1, Ordering::Relaxed);
                let active = Active(Arc::clone(&streams));
                let front = Arc::clone(front);
                let shutdown = shutdown.clone();
                let mut session = ServerSession::new_http2(session);
                session.set_write_timeout(timeouts.send);
                tokio::spawn(STREAMS.scope(Arc::clone(&streams), async move {
                    let _active = active;
                    front.proxy().process_new_http(session, &shutdown).await;
                }));
            }
            Ok(Some(H2Accept::Rejected)) => {
                malformed += 1;
                if malformed > MALFORMED_STREAMS {
                    tracing::debug!("HTTP/2 client sent too many malformed streams; closing");
                    h2.abrupt_shutdown(h2::Reason::PROTOCOL_ERROR);
                    return;
                }
            }
            // The client closed the connection, or it broke: streams in progress end on their
            // own (they hold their stream handles).
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
                return;
            }
        }
    }
}
