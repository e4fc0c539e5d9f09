//! The connection front: HTTP/1 keep-alive handling around pingora's proxy, with a deadline on
//! each request head, and what the proxy hooks need to know about the connection.
//!
//! Pingora times out each *read* of a request head (60 s on a new connection, the keep-alive
//! time after that), not the head as a whole, so a client trickling one byte a minute holds a
//! connection and its task for as long as it likes. Here every head must be complete within
//! `header_timeout` of the connection opening, or within `keepalive` of the previous response
//! on a kept-alive connection (which is also how long an idle one is kept); past that the
//! connection is dropped without an answer (as nginx does for `client_header_timeout`).
//! Pingora's own keep-alive timer is off: this deadline is the only one.
//!
//! The deadlines are kept by one sweeper thread for all connections ([`Deadlines`]), not by a
//! timer per connection: a tokio or pingora timer costs a clock read, a registration and a
//! removal per request (and a tokio one a registration on every wake of the connection's task),
//! while here a request costs two relaxed atomic stores. The sweeper looks every [`TICK`] and
//! wakes the task of a connection whose deadline has passed, which then closes it.
//!
//! The proxy learns about the connection through the connection user context that pingora hands
//! to [`ProxyHttp::on_connection_reuse`](pingora::proxy::ProxyHttp::on_connection_reuse) right
//! after parsing each head: an `Arc<`[`Connection`]`>`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use crate::edge::access_log;
use crate::edge::identity;
use crate::edge::proxy::Gateway;

/// How often the sweeper looks at the deadlines; a head deadline is kept to within two ticks.
pub const TICK: Duration = Duration::from_millis(50);

/// The deadline of a connection whose current request head has arrived.
const HEAD_IN: u64 = u64::MAX;

/// The client end of a connection (the socket peer), in the forms the proxy hooks use.
#[derive(Debug)]
pub struct Client {
    pub ip: Option<IpAddr>,
    /// `ip` as a header value (`X-Forwarded-For`; empty if unknown).
    pub ip_header: http::HeaderValue,
    /// The address and port as the access log writes it (empty if unknown).
    pub text: String,
}

impl Client {
    pub fn of(addr: Option<SocketAddr>) -> Client {
        let ip = addr.map(|a| a.ip());
        Client {
            ip,
            ip_header: ip.map_or(
                http::HeaderValue::from_static(""),
                identity::shared_ip_header,
            ),
            text: addr.map(access_log::client_text).unwrap_or_default(),
        }
    }
}

/// One client connection, as the proxy hooks see it.
#[derive(Debug)]
pub struct Connection {
    /// Made once per connection, for every request on it.
    pub client: Client,
    /// Milliseconds on [`Deadlines::now_ms`]'s clock after which the connection closes if the
    /// current head is not in; [`HEAD_IN`] once it is.
    deadline_ms: AtomicU64,
    /// Set by the sweeper when the deadline passed (the task is woken to act on it).
    expired: AtomicBool,
    /// Set when the connection must close now, whatever it is doing (an upgraded connection
    /// of a user who was shut out; see `upgraded`).
    shut: AtomicBool,
    /// The connection task's waker, for the sweeper.
    waker: Waker,
}

impl Connection {
    /// Called from `on_connection_reuse` as soon as a request head has been parsed.
    pub fn head_in(&self) {
        self.deadline_ms.store(HEAD_IN, Ordering::Relaxed);
    }

    /// Closes the connection: its task is woken and drops the request in progress (both
    /// sockets with it).
    pub fn shut_out(&self) {
        self.shut.store(true, Ordering::Release);
        self.waker.wake_by_ref();
    }

    /// Starts the wait for the next head, which must be complete within `budget`.
    fn await_head(&self, deadlines: &Deadlines, budget: Duration) {
        self.expired.store(false, Ordering::Relaxed);
        // `now_ms` lags the real time by up to a tick: one tick more, so that a head is never
        // cut off before its time.
        let budget = u64::try_from((budget + TICK).as_millis()).unwrap_or(u64::MAX);
        let deadline = deadlines.now_ms().saturating_add(budget);
        self.deadline_ms.store(deadline, Ordering::Relaxed);
    }

    /// Whether the sweeper found the deadline passed while the head was still not in.
    fn cut_off(&self) -> bool {
        if !self.expired.load(Ordering::Acquire) {
            return false;
        }
        // The head may have come in just as the sweeper looked.
        if self.deadline_ms.load(Ordering::Relaxed) == HEAD_IN {
            self.expired.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Every open connection's head deadline, watched by one thread.
pub struct Deadlines {
    epoch: Instant,
    /// Milliseconds since `epoch`, as of the last tick.
    now_ms: AtomicU64,
    connections: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Option<Arc<Connection>>>,
    free: Vec<usize>,
}

impl Deadlines {
    /// Starts the sweeper thread, which lives as long as the process. Without it idle and
    /// slow connections would never be closed (pingora's keep-alive timer is off), so failing
    /// to start it is a start-up error.
    pub fn start() -> std::io::Result<&'static Deadlines> {
        let deadlines: &'static Deadlines = Box::leak(Box::new(Deadlines {
            epoch: Instant::now(),
            now_ms: AtomicU64::new(0),
            connections: Mutex::new(Slots::default()),
        }));
        std::thread::Builder::new()
            .name("head-deadlines".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                deadlines.sweep();
            })?;
        Ok(deadlines)
    }

    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }

    fn sweep(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now_ms.store(now, Ordering::Relaxed);
        let Ok(slots) = self.connections.lock() else {
            return;
        };
        for conn in slots.slots.iter().flatten() {
            if conn.deadline_ms.load(Ordering::Relaxed) <= now
                && !conn.expired.swap(true, Ordering::AcqRel)
            {
                conn.waker.wake_by_ref();
            }
        }
    }

    fn register(&'static self, conn: Arc<Connection>) -> Registration {
        let mut slots = self
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = match slots.free.pop() {
            Some(i) => {
                slots.slots[i] = Some(conn);
                i
            }
            None => {
                slots.slots.push(Some(conn));
                slots.slots.len() - 1
            }
        };
        Registration {
            deadlines: self,
            index,
        }
    }
}

/// A connection's place in [`Deadlines`], given up when the connection ends (however it ends).
struct Registration {
    deadlines: &'static Deadlines,
    index: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut slots = self
            .deadlines
            .connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.slots.get_mut(self.index) {
            *slot = None;
            slots.free.push(self.index);
        }
    }
}

/// A request future that ends (with `None`) when its connection's head deadline passes or the
/// connection is shut out.
struct UntilCutOff<'a, F> {
    request: Pin<&'a mut F>,
    conn: &'a Connection,
}

impl<F: Future<Output = Option<T>>, T> Future for UntilCutOff<'_, F> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.conn.cut_off() {
            tracing::debug!("request head not complete in time; closing");
            return Poll::Ready(None);
        }
        if self.conn.shut.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        self.request.as_mut().poll(cx)
    }
}

/// The time limits the front keeps on a client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// A new connection's first request head must be complete within this.
    pub head: Duration,
    /// A kept-alive connection's next head must be complete within this of the last response.
    pub keepalive: Duration,
    /// Each write to the client (a response head or body chunk) must go out within this, or
    /// the connection is dropped: a client that stops reading does not hold the request (and
    /// its upstream connection) for ever. `None`: no limit.
    pub send: Option<Duration>,
}

/// Pingora's HTTP proxy behind a per-request head deadline.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    deadlines: &'static Deadlines,
    timeouts: ClientTimeouts,
}

impl Front {
    pub fn new(
        proxy: HttpProxy<Gateway>,
        deadlines: &'static Deadlines,
        timeouts: ClientTimeouts,
    ) -> Front {
        Front {
            proxy: Arc::new(proxy),
            deadlines,
            timeouts,
        }
    }
}

/// Set once the listener has stopped: see [`Front::cleanup`].
static DRAINING: AtomicBool = AtomicBool::new(false);

/// How long idle keep-alive connections may still send a request after the listener stops.
/// Within `server.shutdown_grace_seconds` (the runtime ends with it).
const LINGER: Duration = Duration::from_secs(1);

/// Whether the gateway is draining: every answer closes its connection.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
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
        // HTTP/2 (chosen by ALPN on the TLS listener): pingora's own loop, which multiplexes
        // streams; each stream is a request through the same proxy hooks.
        if matches!(
            stream.selected_alpn_proto(),
            Some(pingora::protocols::ALPN::H2)
        ) {
            return pingora::apps::ServerApp::process_new(&self.proxy, stream, shutdown).await;
        }
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        let conn = Arc::new(Connection {
            client: Client::of(client),
            deadline_ms: AtomicU64::new(HEAD_IN),
            expired: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            waker,
        });
        let deadlines = self.deadlines;
        let _registration = deadlines.register(Arc::clone(&conn));

        let mut session = ServerSession::new_http1(stream);
        // `Some(0)`: keep-alive without pingora's timer (the deadline here bounds idle time).
        session.set_keepalive((!*shutdown.borrow()).then_some(0));
        let mut budget = self.timeouts.head;
        loop {
            // Per session: pingora does not carry it over to the next request's.
            session.set_write_timeout(self.timeouts.send);
            conn.await_head(deadlines, budget);
            session.set_connection_user_context(Some(Box::new(Arc::clone(&conn))));
            let request = self.proxy.process_new_http(session, shutdown);
            tokio::pin!(request);
            let reused = UntilCutOff {
                request,
                conn: &conn,
            }
            .await;
            let (stream, settings) = reused?.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            budget = self.timeouts.keepalive;
        }
    }

    /// The listener has stopped (shutdown, or an upgrade handing the sockets over). Each
    /// request from now on is answered with `Connection: close` ([`draining`]); connections
    /// waiting for their next request get [`LINGER`] to send it before they are dropped,
    /// since dropping one at the moment its client sends would fail that request.
    async fn cleanup(&self) {
        DRAINING.store(true, Ordering::Relaxed);
        tokio::time::sleep(LINGER).await;
        self.proxy.http_cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        Connection {
            client: Client::of(None),
            deadline_ms: AtomicU64::new(HEAD_IN),
            expired: AtomicBool::new(false),
            shut: AtomicBool::new(false),
            waker: Waker::noop().clone(),
        }
    }

    #[test]
    fn a_head_that_came_in_as_the_sweeper_looked_is_not_cut_off() {
        let deadlines = Deadlines {
            epoch: Instant::now(),
            now_ms: AtomicU64::new(1_000),
            connections: Mutex::new(Slots::default()),
        };
        let conn = connection();
        conn.await_head(&deadlines, Duration::from_millis(500));
        // Not before the budget (plus the tick `now_ms` may lag by).
        assert_eq!(conn.deadline_ms.load(Ordering::Relaxed), 1_550);
        conn.expired.store(true, Ordering::Release);
        conn.head_in();
        assert!(!conn.cut_off());
        // ... and the late verdict is forgotten, so the next wait starts clean.
        assert!(!conn.expired.load(Ordering::Relaxed));
        conn.await_head(&deadlines, Duration::from_millis(500));
        conn.expired.store(true, Ordering::Release);
        assert!(conn.cut_off());
    }

    #[test]
    fn the_sweeper_wakes_only_connections_past_their_deadline() {
        let deadlines: &'static Deadlines = Box::leak(Box::new(Deadlines {
            epoch: Instant::now() - Duration::from_secs(10),
            now_ms: AtomicU64::new(0),
            connections: Mutex::new(Slots::default()),
        }));
        let late = Arc::new(connection());
        late.deadline_ms.store(5_000, Ordering::Relaxed);
        let waiting = Arc::new(connection());
        waiting.deadline_ms.store(60_000, Ordering::Relaxed);
        let busy = Arc::new(connection());
        let registrations: Vec<_> = [&late, &waiting, &busy]
            .into_iter()
            .map(|c| deadlines.register(Arc::clone(c)))
            .collect();
        deadlines.sweep();
        assert!(late.cut_off());
        assert!(!waiting.cut_off());
        assert!(!busy.cut_off());
        assert!(deadlines.now_ms() >= 10_000);
        drop(registrations);
        let slots = deadlines.connections.lock().unwrap();
        assert!(slots.slots.iter().all(Option::is_none));
        assert_eq!(slots.free.len(), 3);
    }
}
