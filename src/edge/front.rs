//! The connection front: every accepted connection passes here first, is admitted (or not),
//! gets a deadline on each request head, and goes to its engine: HTTP/1 to hyper
//! ([`crate::edge::h1`], the default) or to pingora's proxy (`server.http1_engine =
//! "pingora"`, the loop below), HTTP/2 to [`crate::edge::h2`].
//!
//! Pingora times out each *read* of a request head (60 s on a new connection, the keep-alive
//! time after that), not the head as a whole, and hyper's one head timer costs a timer per
//! request, so a client trickling one byte a minute would hold a connection and its task for
//! as long as it likes. Here every head must be complete within
//! `header_timeout` of the connection opening, or within `keepalive` of the previous response
//! on a kept-alive connection (which is also how long an idle one is kept); past that the
//! connection is dropped without an answer (as nginx does for `client_header_timeout`).
//! The engines' own keep-alive and head timers are off: this deadline is the only one.
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
//!
//! Before any of that, two bounds on what one client can hold:
//! - [`Admission`]: at most `server.max_connections_per_ip` connections per client address
//!   (trusted proxies excepted) and `server.max_connections` in all; a connection past either
//!   is closed at once, so a flood from one address cannot use up the descriptors that
//!   everyone else (and the upstream health checks) need;
//! - [`HandshakeDeadline`]: on the TLS listener, the TLS handshake must be done within
//!   `server.header_timeout_ms` (pingora's own limit is 60 s); the sweeper shuts down the
//!   socket of one that is not.
//!
//! HTTP/2 connections are served by [`crate::edge::h2`] with the same deadlines.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, Stream};
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

    /// Whether the connection was shut out (see [`Connection::shut_out`]).
    pub(crate) fn is_shut(&self) -> bool {
        self.shut.load(Ordering::Acquire)
    }

    /// Starts the wait for the next head, which must be complete within `budget`.
    pub(crate) fn await_head(&self, deadlines: &Deadlines, budget: Duration) {
        self.expired.store(false, Ordering::Relaxed);
        // `now_ms` lags the real time by up to a tick: one tick more, so that a head is never
        // cut off before its time.
        let budget = u64::try_from((budget + TICK).as_millis()).unwrap_or(u64::MAX);
        let deadline = deadlines.now_ms().saturating_add(budget);
        self.deadline_ms.store(deadline, Ordering::Relaxed);
    }

    /// Whether the sweeper found the deadline passed while the head was still not in.
    pub(crate) fn cut_off(&self) -> bool {
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
    /// TLS handshakes in progress (see [`HandshakeDeadline`]).
    handshakes: Mutex<Vec<Handshake>>,
}

/// A TLS handshake in progress: a descriptor of its own for the socket (so that shutting it
/// down can never reach another socket that reused the listener's descriptor number), the
/// socket's inode (which names it), when it must be done, and its admission.
struct Handshake {
    socket: OwnedFd,
    inode: u64,
    deadline_ms: u64,
    ticket: Option<Ticket>,
}

/// The inode of the socket behind `fd` (unique among open sockets).
fn socket_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: an all-zero stat is a valid value for fstat to fill; the descriptor is open.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } == 0).then_some(stat.st_ino)
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
            handshakes: Mutex::new(Vec::new()),
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
        if let Ok(mut handshakes) = self.handshakes.lock() {
            handshakes.retain(|h| {
                if h.deadline_ms > now {
                    return true;
                }
                // The handshake's read fails, and pingora drops the connection.
                // SAFETY: shutdown(2) on a descriptor this struct owns.
                unsafe { libc::shutdown(h.socket.as_raw_fd(), libc::SHUT_RDWR) };
                tracing::debug!("TLS handshake not done in time; closing");
                false
            });
        }
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

    /// Watches the TLS handshake on `socket` (see [`HandshakeDeadline`]).
    fn handshake_started(&self, socket: BorrowedFd<'_>, budget: Duration, ticket: Option<Ticket>) {
        let (Ok(own), Some(inode)) = (socket.try_clone_to_owned(), socket_inode(socket)) else {
            return;
        };
        let budget = u64::try_from((budget + TICK).as_millis()).unwrap_or(u64::MAX);
        let handshake = Handshake {
            socket: own,
            inode,
            deadline_ms: self.now_ms().saturating_add(budget),
            ticket,
        };
        self.handshakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(handshake);
    }

    /// The TLS handshake on socket `fd` is done: it is no longer watched; its admission
    /// ticket, if it got one, passes to the connection.
    fn handshake_done(&self, fd: RawFd) -> Option<Ticket> {
        // SAFETY: `fd` is the open descriptor of the stream being served.
        let inode = socket_inode(unsafe { BorrowedFd::borrow_raw(fd) })?;
        let mut handshakes = self
            .handshakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = handshakes.iter().position(|h| h.inode == inode)?;
        handshakes.swap_remove(i).ticket
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
pub(crate) struct UntilCutOff<'a, F> {
    pub(crate) request: Pin<&'a mut F>,
    pub(crate) conn: &'a Connection,
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

/// The engines behind the admission and the per-request head deadline.
pub struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    /// `server.http1_engine = "hyper"`: HTTP/1 connections are hyper's.
    h1: Option<Arc<crate::edge::h1::H1>>,
    deadlines: &'static Deadlines,
    timeouts: ClientTimeouts,
    admission: Arc<Admission>,
}

impl Front {
    pub fn new(
        proxy: HttpProxy<Gateway>,
        deadlines: &'static Deadlines,
        timeouts: ClientTimeouts,
        admission: Arc<Admission>,
    ) -> Front {
        Front {
            proxy: Arc::new(proxy),
            h1: None,
            deadlines,
            timeouts,
            admission,
        }
    }

    /// Serves HTTP/1 connections with hyper behind `decider` instead of pingora's proxy.
    pub fn with_hyper(
        mut self,
        decider: crate::edge::decision::Decider,
        conf: &pingora::server::configuration::ServerConf,
    ) -> Front {
        self.h1 = Some(Arc::new(crate::edge::h1::H1::new(
            decider,
            conf,
            self.deadlines,
            self.timeouts,
        )));
        self
    }

    pub(crate) fn proxy(&self) -> &Arc<HttpProxy<Gateway>> {
        &self.proxy
    }

    /// The TLS listener's watch on handshakes, to be set on its endpoint.
    pub fn handshake_deadline(&self) -> Arc<HandshakeDeadline> {
        Arc::new(HandshakeDeadline {
            deadlines: self.deadlines,
            budget: self.timeouts.head,
            admission: Arc::clone(&self.admission),
        })
    }
}

/// How many connections the clients may hold: per address, and in all.
pub struct Admission {
    /// 0: no limit per address.
    per_ip: usize,
    total: usize,
    /// Addresses without a limit of their own: the trusted proxies, behind which many
    /// clients share one address.
    exempt: identity::TrustedProxies,
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize, foldhash::fast::RandomState>>,
    /// When the last refusal was logged (seconds since start): one line a second at most.
    warned_at: AtomicU64,
    epoch: Instant,
}

impl Admission {
    pub fn new(per_ip: usize, total: usize, exempt: identity::TrustedProxies) -> Admission {
        Admission {
            per_ip,
            total,
            exempt,
            open: AtomicUsize::new(0),
            by_ip: Mutex::new(HashMap::default()),
            warned_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// A place for a new connection from `ip`, or `None` (close it) when that address or the
    /// gateway holds as many as it may.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<Ticket> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.total {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused(ip, "server.max_connections");
            return None;
        }
        let counted = ip.filter(|ip| self.per_ip > 0 && !self.exempt.contains(*ip));
        if let Some(ip) = counted {
            let mut by_ip = self
                .by_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let held = by_ip.entry(ip).or_insert(0);
            if *held >= self.per_ip {
                drop(by_ip);
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.refused(Some(ip), "server.max_connections_per_ip");
                return None;
            }
            *held += 1;
        }
        crate::metrics::metrics().connections_open(self.open.load(Ordering::Relaxed));
        Some(Ticket {
            admission: Arc::clone(self),
            ip: counted,
        })
    }

    fn refused(&self, ip: Option<IpAddr>, limit: &'static str) {
        crate::metrics::metrics().connection_refused(limit);
        let now = self.epoch.elapsed().as_secs();
        let last = self.warned_at.swap(now, Ordering::Relaxed);
        if last != now {
            tracing::warn!(client = ?ip, limit, "connection refused: too many connections");
        }
    }
}

/// A connection's place in [`Admission`], given back when the connection ends.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let admission = &self.admission;
        if let Some(ip) = self.ip {
            let mut by_ip = admission
                .by_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(held) = by_ip.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
        let open = admission.open.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::metrics().connections_open(open);
    }
}

/// On the TLS listener, before the handshake: the connection is admitted (or closed at once)
/// and its handshake must be done within the head deadline.
pub struct HandshakeDeadline {
    deadlines: &'static Deadlines,
    budget: Duration,
    admission: Arc<Admission>,
}

#[async_trait]
impl PreTlsProcess for HandshakeDeadline {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Some(ticket) = self.admission.admit(ip) else {
            return Err(pingora::Error::new(pingora::ErrorType::ConnectRefused));
        };
        // SAFETY: the stream's descriptor is open for the duration of this call.
        let socket = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        self.deadlines
            .handshake_started(socket, self.budget, Some(ticket));
        Ok(())
    }
}

/// Set once the listener has stopped: see [`Front::cleanup`].
static DRAINING: AtomicBool = AtomicBool::new(false);

/// How long idle keep-alive connections may still send a request after the listener stops.
/// Within `server.shutdown_grace_seconds` (the runtime ends with it).
pub(crate) const LINGER: Duration = Duration::from_secs(1);

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
        let client = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).copied());
        // A TLS connection was admitted before its handshake (the ticket comes with it).
        let handshaken = match stream.get_ssl_digest() {
            Some(_) => self.deadlines.handshake_done(stream.id()),
            None => None,
        };
        let _ticket = match handshaken {
            Some(ticket) => ticket,
            None => self.admission.admit(client.map(|a| a.ip()))?,
        };
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
        // HTTP/2 (chosen by ALPN on the TLS listener): streams multiplexed on the connection,
        // each a request through the same proxy hooks.
        if matches!(
            stream.selected_alpn_proto(),
            Some(pingora::protocols::ALPN::H2)
        ) {
            crate::edge::h2::serve(self, stream, shutdown, conn, deadlines, self.timeouts).await;
            return None;
        }
        if let Some(h1) = &self.h1 {
            h1.serve(stream, shutdown, conn).await;
            return None;
        }
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
    fn admission_holds_each_address_and_the_total_to_their_limits() {
        let trusted = identity::TrustedProxies::parse(&["10.0.0.1".to_string()]).unwrap();
        let admission = Arc::new(Admission::new(2, 5, trusted));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let first = admission.admit(Some(a)).unwrap();
        let _second = admission.admit(Some(a)).unwrap();
        assert!(
            admission.admit(Some(a)).is_none(),
            "a third from one address"
        );
        let _other = admission.admit(Some(b)).unwrap();
        // A trusted proxy speaks for many clients: only the total holds it.
        let _p1 = admission.admit(Some(proxy)).unwrap();
        let _p2 = admission.admit(Some(proxy)).unwrap();
        assert!(admission.admit(Some(proxy)).is_none(), "past the total");
        assert!(admission.admit(Some(b)).is_none(), "past the total");
        drop(first);
        let _again = admission.admit(Some(a)).unwrap();
        assert_eq!(admission.open.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_head_that_came_in_as_the_sweeper_looked_is_not_cut_off() {
        let deadlines = Deadlines {
            epoch: Instant::now(),
            now_ms: AtomicU64::new(1_000),
            connections: Mutex::new(Slots::default()),
            handshakes: Mutex::new(Vec::new()),
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
            handshakes: Mutex::new(Vec::new()),
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
