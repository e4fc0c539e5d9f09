//! The TLS listener (`[tls]`) with certificates the tests make with `openssl`: curl over
//! HTTP/2 and HTTP/1.1, HSTS only over TLS, proxying over HTTP/2, certificate reload on SIGHUP,
//! clear start-up errors, and TLS to upstreams verified against a configured CA.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

const PASSWORD: &str = "TlsPassword123!";

/// A CA (`ca.pem`) in `dir`, made once per directory.
pub(crate) fn ca(dir: &Path) -> PathBuf {
    if !dir.join("ca.pem").exists() {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Sentinel Test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
    }
    dir.join("ca.pem")
}

/// A certificate for localhost and 127.0.0.1 named `cn`, signed by the CA: (cert, key).
pub(crate) fn leaf(dir: &Path, cn: &str) -> (PathBuf, PathBuf) {
    ca(dir);
    let (key, csr, cert) = (
        format!("{cn}.key"),
        format!("{cn}.csr"),
        format!("{cn}.pem"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            &cert,
        ],
    );
    (dir.join(cert), dir.join(key))
}

pub(crate) fn tls_table(port: u16, cert: &Path, key: &Path, hsts: u64) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:{port}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         hsts_max_age_seconds = {hsts}\n\n",
        cert.display(),
        key.display()
    )
}

/// curl's answer: (the status line's protocol and code, headers, body, the server
/// certificate's subject).
fn curl(args: &[&str], url: &str) -> (String, String, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "-D", "-"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "curl {url}: {stderr}");
    let (head, body) = stdout.split_once("\r\n\r\n").unwrap_or((&stdout, ""));
    let status = head.lines().next().unwrap_or("").trim().to_string();
    let subject = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("*  subject: "))
        .unwrap_or("")
        .to_string();
    (status, head.to_ascii_lowercase(), body.to_string(), subject)
}

#[tokio::test]
async fn curl_speaks_http2_and_http1_over_tls_and_hsts_comes_only_with_tls() {
    let certs = TempDir::new();
    let (cert, key) = leaf(&certs.0, "localhost");
    let ca = ca(&certs.0);
    let upstream = Upstream::start().await;
    let tls_port = free_port();
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "{}{}",
            tls_table(tls_port, &cert, &key, 31536000),
            route("/api/", &[upstream.addr()], "required", "")
        ),
        ..Spawn::default()
    })
    .await;
    let (token, user_id) = app.registered("tls@example.com", PASSWORD).await;
    let https = format!("https://localhost:{tls_port}");
    let cacert = ca.display().to_string();

    let (status, head, body, subject) = curl(
        &["--http2", "--cacert", &cacert],
        &format!("{https}/health"),
    );
    assert_eq!(status, "HTTP/2 200");
    assert_eq!(body, r#"{"status":"ok"}"#);
    assert!(
        subject.contains("CN=localhost") || subject.contains("CN = localhost"),
        "{subject}"
    );
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    let (status, head, _, _) = curl(
        &["--http1.1", "--cacert", &cacert],
        &format!("{https}/health"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        head.contains("strict-transport-security: max-age=31536000"),
        "{head}"
    );
    // The plain listener never sends HSTS (a browser would ignore it there anyway).
    let plain = app.get("/health").await;
    assert!(plain.header("strict-transport-security").is_none());

    // A protected route over HTTP/2: verified, proxied with the identity headers, HSTS added.
    let auth = format!("Authorization: Bearer {token}");
    let (status, head, body, _) = curl(
        &["--http2", "--cacert", &cacert, "-H", &auth],
        &format!("{https}/api/hello"),
    );
    assert_eq!(status, "HTTP/2 200");
    assert!(head.contains("strict-transport-security"), "{head}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-user-id" && h[1] == user_id.as_str()),
        "{echo}"
    );
    // The upstream learns the scheme and host the client used: over HTTP/2 the host is the
    // `:authority` (no Host header is sent).
    let forwarded = |echo: &serde_json::Value, name: &str| {
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let authority = format!("localhost:{tls_port}");
    assert_eq!(forwarded(&echo, "x-forwarded-proto"), ["https"], "{echo}");
    assert_eq!(
        forwarded(&echo, "x-forwarded-host"),
        [authority.as_str()],
        "{echo}"
    );
    let (status, _, body, _) = curl(
        &["--http1.1", "--cacert", &cacert, "-H", &auth],
        &format!("{https}/api/hello"),
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(forwarded(&echo, "x-forwarded-proto"), ["https"], "{echo}");
    assert_eq!(
        forwarded(&echo, "x-forwarded-host"),
        [authority.as_str()],
        "{echo}"
    );
    let echo = app.get_as("/api/hello", &token).await.json();
    assert_eq!(forwarded(&echo, "x-forwarded-proto"), ["http"], "{echo}");

    let (status, _, _, _) = curl(
        &["--http2", "--cacert", &cacert],
        &format!("{https}/api/hello"),
    );
    assert_eq!(status, "HTTP/2 401");
    // A login by form over HTTP/2.
    let (status, _, body, _) = curl(
        &[
            "--http2",
            "--cacert",
            &cacert,
            "-d",
            "username=tls@example.com",
            "-d",
            &format!("password={PASSWORD}"),
        ],
        &format!("{https}/auth/token"),
    );
    assert_eq!(status, "HTTP/2 200", "{body}");
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_connections_and_a_bad_one_is_refused() {
    let certs = TempDir::new();
    let (first, first_key) = leaf(&certs.0, "first");
    let (second, second_key) = leaf(&certs.0, "second");
    let ca = ca(&certs.0).display().to_string();
    let live_cert = certs.0.join("live.pem");
    let live_key = certs.0.join("live.key");
    std::fs::copy(&first, &live_cert).unwrap();
    std::fs::copy(&first_key, &live_key).unwrap();
    let tls_port = free_port();
    let mut app = TestApp::spawn_with(Spawn {
        config_extra: tls_table(tls_port, &live_cert, &live_key, 0),
        ..Spawn::default()
    })
    .await;
    let url = format!("https://localhost:{tls_port}/health");
    let (_, head, _, subject) = curl(&["--cacert", &ca], &url);
    assert!(subject.contains("first"), "{subject}");
    assert!(!head.contains("strict-transport-security"), "{head}");

    std::fs::copy(&second, &live_cert).unwrap();
    std::fs::copy(&second_key, &live_key).unwrap();
    unsafe {
        libc::kill(app.pid() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, _, subject) = curl(&["--cacert", &ca], &url);
        if subject.contains("second") {
            break;
        }
        assert!(Instant::now() < deadline, "still {subject}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A broken pair is refused and logged; the second certificate stays in use.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    unsafe {
        libc::kill(app.pid() as i32, libc::SIGHUP);
    }
    let (line, _) = app.log_line("not reloaded").await;
    assert!(line.contains("holds no certificate"), "{line}");
    let (_, _, _, subject) = curl(&["--cacert", &ca], &url);
    assert!(subject.contains("second"), "{subject}");
    let (status, took) = app.terminate(Duration::from_secs(10)).expect("stops");
    assert!(status.success() && took < Duration::from_secs(5));
}

#[test]
fn a_missing_or_mismatched_certificate_stops_start_up_with_one_line() {
    let certs = TempDir::new();
    let (cert, _) = leaf(&certs.0, "one");
    let (_, other_key) = leaf(&certs.0, "two");
    let missing = certs.0.join("missing.pem");
    for (cert, key, expect) in [
        (
            missing.clone(),
            other_key.clone(),
            "cannot read tls.cert_file",
        ),
        (
            cert.clone(),
            other_key.clone(),
            "is not the key of tls.cert_file",
        ),
    ] {
        let dir = TempDir::new();
        let config = dir.0.join("gateway.toml");
        std::fs::write(
            &config,
            config_text(
                free_port(),
                "postgres://postgres@127.0.0.1/x",
                &tls_table(free_port(), &cert, &key, 0),
            ),
        )
        .unwrap();
        // A configuration error (exit 2), found by check-config as by start-up.
        for args in [&[][..], &["check-config"][..]] {
            let out = command(&dir.0, &config).args(args).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{out:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(stderr.contains(expect), "{stderr}");
        }
    }
}

struct HttpsUpstream(Child);

impl Drop for HttpsUpstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tls_upstreams_are_verified_against_the_configured_ca() {
    let certs = TempDir::new();
    let (cert, key) = leaf(&certs.0, "upstream");
    let ca = ca(&certs.0);
    let port = free_port();
    let _upstream = HttpsUpstream(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/support/https_upstream.py"
            ))
            .arg(port.to_string())
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the https upstream did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let upstream = format!("127.0.0.1:{port}");
    let tls_route = |prefix: &str, sni: &str| {
        route(
            prefix,
            std::slice::from_ref(&upstream),
            "public",
            &format!("tls = true\n{sni}"),
        )
    };
    // Verified against the CA given; the SNI names the certificate's host.
    let app = TestApp::spawn_with(Spawn {
        config_extra: format!(
            "[proxy]\nupstream_ca_file = \"{}\"\n\n{}{}{}",
            ca.display(),
            tls_route("/ip/", ""),
            tls_route("/named/", "sni = \"localhost\"\n"),
            tls_route("/wrong/", "sni = \"elsewhere.example\"\n"),
        ),
        ..Spawn::default()
    })
    .await;
    let a = app.get("/ip/hello").await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json()["tls"], true);
    assert_eq!(app.get("/named/hello").await.status, 200);
    // A name the certificate does not carry: refused, never proxied.
    assert_eq!(app.get("/wrong/hello").await.status, 502);

    // The system's roots do not know the test CA: 502.
    let system = TestApp::spawn_with(Spawn {
        config_extra: tls_route("/ip/", ""),
        ..Spawn::default()
    })
    .await;
    assert_eq!(system.get("/ip/hello").await.status, 502);
}
