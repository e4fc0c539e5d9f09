//! What one client can hold: HTTP/2 connections keep the HTTP/1 deadlines (preface, idle,
//! writes), a connection that cancels too many streams gets GOAWAY, the TLS handshake has the
//! head deadline, and one address holds at most `server.max_connections_per_ip` connections
//! while others are still served. Raw HTTP/2 over TLS through the `h2` crate, so that streams
//! can be opened and reset at will.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use crate::helpers::*;
use crate::tls::{ca, leaf, tls_table};

struct H2Gateway {
    app: TestApp,
    tls_port: u16,
    upstream: Upstream,
    connector: tokio_rustls::TlsConnector,
    _certs: TempDir,
}

/// A gateway with a TLS listener (`/api/` protected and `/public/`, both to one upstream) and
/// these `[server]` keys.
async fn h2_gateway(server: &str) -> H2Gateway {
    let certs = TempDir::new();
    let (cert, key) = leaf(&certs.0, "localhost");
    let upstream = Upstream::start().await;
    let tls_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        server_extra: server.to_string(),
        config_extra: format!(
            "{}{}{}",
            tls_table(tls_port, &cert, &key, 0),
            route("/api/", &[upstream.addr()], "required", ""),
            route("/public/", &[upstream.addr()], "public", "")
        ),
        ..Spawn::default()
    })
    .await;
    H2Gateway {
        app,
        tls_port,
        upstream,
        connector: connector(&ca(&certs.0), &[b"h2"]),
        _certs: certs,
    }
}

fn connector(ca: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

impl H2Gateway {
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.tls_port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        self.connector.connect(name, tcp).await.unwrap()
    }

    /// An HTTP/2 connection: the request sender, and a task that ends when the connection
    /// does (with its error, if any).
    async fn h2(
        &self,
    ) -> (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ) {
        let (send, connection) = h2::client::handshake(self.tls().await).await.unwrap();
        (send, tokio::spawn(connection))
    }

    fn request(&self, path: &str) -> http::Request<()> {
        http::Request::get(format!("https://localhost:{}{path}", self.tls_port))
            .body(())
            .unwrap()
    }
}

/// Waits until `done` finishes; the time it took, or `None` past `within`.
async fn ends_within<T>(
    done: &mut tokio::task::JoinHandle<T>,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(within, done)
        .await
        .ok()
        .map(|_| started.elapsed())
}

/// Reads until the peer closes; the time it took, or `None` past `within`.
async fn closed_within(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_keepalive_time() {
    let gw = h2_gateway("keepalive_seconds = 2\nheader_timeout_ms = 1000\n").await;
    let (mut send, mut connection) = gw.h2().await;
    let (answer, _) = send.send_request(gw.request("/health"), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    // No stream after that: closed once the keep-alive time has passed, not before.
    let took = ends_within(&mut connection, Duration::from_secs(10)).await;
    let took = took.expect("an idle HTTP/2 connection stayed open");
    assert!(took > Duration::from_millis(1500), "{took:?}");
    // A connection whose requests take longer than that is not idle meanwhile.
    let (mut send, mut connection) = gw.h2().await;
    let (answer, _) = send
        .send_request(gw.request("/public/x?delay_ms=3000"), true)
        .unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    assert!(ends_within(&mut connection, Duration::from_secs(10))
        .await
        .is_some());
}

#[tokio::test]
async fn http2_without_a_preface_and_silent_tls_peers_are_cut_at_the_head_deadline() {
    let gw = h2_gateway("header_timeout_ms = 1000\n").await;
    // ALPN chose h2, then nothing: no preface, no settings.
    let mut tls = gw.tls().await;
    let took = closed_within(&mut tls, Duration::from_secs(10)).await;
    let took = took.expect("an HTTP/2 connection without a preface stayed open");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Not even a TLS ClientHello.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.tls_port))
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(10)).await;
    let took = took.expect("a silent TCP peer on the TLS port stayed open");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // A ClientHello's first bytes, then silence: the handshake is bounded as a whole.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.tls_port))
        .await
        .unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(10)).await;
    assert!(
        took.is_some_and(|t| t < Duration::from_millis(2500)),
        "{took:?}"
    );
    // The listener still serves.
    let (mut send, _connection) = gw.h2().await;
    let (answer, _) = send.send_request(gw.request("/health"), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_stream_the_client_never_reads_gives_its_upstream_connection_back() {
    let gw = h2_gateway("send_timeout_ms = 1000\n").await;
    let (mut send, _connection) = gw.h2().await;
    // Far more than the stream's flow-control window (64 KiB): the gateway's writes stall.
    let (answer, _) = send
        .send_request(gw.request("/public/big?bytes=4000000"), true)
        .unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // By now the write timeout has ended the stream: what is read ends in an error, short.
    let mut body = answer.into_body();
    let mut read = 0usize;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
            Ok(Some(Ok(chunk))) => {
                read += chunk.len();
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Ok(Some(Err(e))) => break Some(e),
            Ok(None) => break None,
            Err(_) => panic!("the stream neither ended nor moved"),
        }
    };
    assert!(ended.is_some(), "the whole body arrived ({read} bytes)");
    assert!(read < 4_000_000, "{read}");
}

#[tokio::test]
async fn a_client_that_cancels_stream_after_stream_gets_goaway() {
    let gw = h2_gateway("").await;
    let before = gw.upstream.served().await;
    let (mut send, mut connection) = gw.h2().await;
    // Batches of requests to a slow upstream, each reset once the gateway has sent it on.
    let mut opened = 0usize;
    'batches: for _ in 0..20 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let Ok(ready) =
                tokio::time::timeout(Duration::from_secs(5), send.clone().ready()).await
            else {
                break 'batches;
            };
            let Ok(mut ready) = ready else { break 'batches };
            match ready.send_request(gw.request("/public/slow?delay_ms=2000"), true) {
                Ok((answer, stream)) => batch.push((answer, stream)),
                Err(_) => break 'batches,
            }
            opened += 1;
            send = ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (answer, mut stream) in batch {
            stream.send_reset(h2::Reason::CANCEL);
            drop(answer);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The gateway ended the connection (GOAWAY, ENHANCE_YOUR_CALM) long before 1,000 streams.
    let ended = ends_within(&mut connection, Duration::from_secs(10)).await;
    assert!(
        ended.is_some(),
        "the connection survived {opened} cancelled streams"
    );
    assert!(
        opened < 400,
        "{opened} streams were opened before the connection ended"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_upstream = gw.upstream.served().await - before;
    eprintln!("{opened} streams opened, {sent_upstream} sent upstream before GOAWAY");
    assert!(
        sent_upstream < 400,
        "{sent_upstream} requests reached the upstream"
    );
    gw.app
        .log_line("HTTP/2 client cancelled too many streams")
        .await;
    // An honest connection is served as before.
    let (mut send, _connection) = gw.h2().await;
    let (answer, _) = send.send_request(gw.request("/public/x"), true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
}

/// A TCP connection to `port` from the loopback address `from`.
async fn connect_from(from: &str, port: u16) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

/// `GET /health` on a new connection from `from`, answered in full.
async fn health_from(from: &str, port: u16) -> String {
    let mut c = connect_from(from, port).await;
    let _ = c
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn one_address_holds_at_most_its_connections_and_others_are_still_served() {
    let gw = h2_gateway("max_connections_per_ip = 4\nkeepalive_seconds = 30\n").await;
    let flood = "127.0.0.3";
    let name = || rustls::pki_types::ServerName::try_from("localhost").unwrap();
    // Four held from one address: two HTTP/1 on the plain port, two HTTP/2 over TLS.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect_from(flood, gw.app.port).await;
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(c.read(&mut buf).await.unwrap() > 0);
        held.push(c);
    }
    let mut h2_held = Vec::new();
    for _ in 0..2 {
        let tls = gw
            .connector
            .connect(name(), connect_from(flood, gw.tls_port).await);
        let (mut send, connection) = h2::client::handshake(tls.await.unwrap()).await.unwrap();
        let connection = tokio::spawn(connection);
        let (answer, _) = send.send_request(gw.request("/health"), true).unwrap();
        assert_eq!(answer.await.unwrap().status(), 200);
        h2_held.push((send, connection));
    }
    // A fifth is closed at once, on either port.
    let fifth = health_from(flood, gw.app.port).await;
    assert_eq!(fifth, "", "a fifth connection was served");
    let tls = gw
        .connector
        .connect(name(), connect_from(flood, gw.tls_port).await);
    assert!(tls.await.is_err(), "a fifth (TLS) connection was served");
    // Another address is served meanwhile.
    let other = health_from("127.0.0.1", gw.app.port).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // A place given back is a place to take.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = health_from(flood, gw.app.port).await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    gw.app
        .log_line("connection refused: too many connections")
        .await;
}

#[tokio::test]
async fn a_stream_the_client_resets_ends_its_upstream_request() {
    // An upstream that reads a request and never answers: it sees its connection close when
    // the gateway gives the request up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        // Health checks connect and close; the request comes on a connection that sends.
        let mut conn = loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                break conn;
            }
        };
        let arrived = Instant::now();
        let _ = conn.read(&mut buf).await;
        let _ = closed_tx.send(arrived.elapsed());
    });
    let certs = TempDir::new();
    let (cert, key) = leaf(&certs.0, "localhost");
    let tls_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            tls_table(tls_port, &cert, &key, 0),
            route("/public/", &[upstream], "public", "read_timeout_ms = 30000")
        ),
        ..Spawn::default()
    })
    .await;
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector(&ca(&certs.0), &[b"h2"])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut send, connection) = h2::client::handshake(tls).await.unwrap();
    let _connection = tokio::spawn(connection);
    let request = http::Request::get(format!("https://localhost:{tls_port}/public/wait"))
        .body(())
        .unwrap();
    let (_answer, mut stream) = send.send_request(request, true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream.send_reset(h2::Reason::CANCEL);
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_rx).await;
    let closed = closed
        .expect("the upstream request outlived its reset stream")
        .unwrap();
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    drop(app);
}
