//! PostgreSQL over TLS, against a cluster of the test's own with `ssl = on`, a certificate the
//! test makes (for `localhost`, signed by a CA of its own), and no connection allowed without
//! TLS: every `sslmode` does what libpq's does.

use std::path::Path;
use std::time::Duration;

use crate::cluster::OwnCluster;
use crate::helpers::*;

/// A CA (`<name>.pem`, `<name>.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}

/// A server certificate for `localhost` (and no IP address) signed by `ca`, as
/// `server.pem`/`server.key` in `dir`.
fn make_server_cert(dir: &Path, ca: &str) {
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

/// Runs `sentinel-gateway migrate` against `url`, waiting at most a second for the database.
fn migrate(url: &str) -> std::process::Output {
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        // The default wait for PostgreSQL (60 s): a refusal must end start-up at once anyway.
        format!("[database]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    command(&dir.0, &config).arg("migrate").output().unwrap()
}

#[tokio::test]
async fn postgres_over_tls_verifies_as_libpq_does() {
    let certs = TempDir::new();
    make_ca(&certs.0, "ca");
    make_ca(&certs.0, "other-ca");
    make_server_cert(&certs.0, "ca");
    let cluster = OwnCluster::create_with(|data| {
        for file in ["server.pem", "server.key"] {
            std::fs::copy(certs.0.join(file), data.join(file)).unwrap();
        }
        let key = data.join("server.key");
        let mut perms = std::fs::metadata(&key).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&key, perms).unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        // TLS or nothing over TCP.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n\
             hostnossl all all 0.0.0.0/0 reject\nhostnossl all all ::/0 reject\n",
        )
        .unwrap();
    });
    let ca = certs.0.join("ca.pem");
    let other = certs.0.join("other-ca.pem");
    let url = |host: &str, query: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?{query}",
            cluster.port
        )
    };
    let ca_query = |mode: &str, ca: &Path| format!("sslmode={mode}&sslrootcert={}", ca.display());
    let cases = [
        // (host, query, connects, what the failure says)
        (
            "127.0.0.1",
            "sslmode=disable".to_string(),
            false,
            "no encryption",
        ),
        ("127.0.0.1", String::new(), true, ""),
        ("127.0.0.1", "sslmode=require".to_string(), true, ""),
        ("localhost", ca_query("verify-full", &ca), true, ""),
        (
            "127.0.0.1",
            ca_query("verify-full", &ca),
            false,
            "certificate",
        ),
        ("127.0.0.1", ca_query("verify-ca", &ca), true, ""),
        (
            "localhost",
            ca_query("verify-full", &other),
            false,
            "certificate",
        ),
        (
            "localhost",
            ca_query("verify-ca", &other),
            false,
            "certificate",
        ),
        // libpq: require with a root certificate checks the chain.
        (
            "localhost",
            ca_query("require", &other),
            false,
            "certificate",
        ),
    ];
    for (host, query, connects, says) in cases {
        let started = std::time::Instant::now();
        let out = migrate(&url(host, &query));
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.success(), connects, "{host} {query}: {stderr}");
        assert!(stderr.contains(says), "{host} {query}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        if !connects {
            // A configuration error: one line, exit 2, at once (not after the wait for an
            // unreachable database).
            assert_eq!(out.status.code(), Some(2), "{host} {query}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(took < Duration::from_secs(5), "{host} {query}: {took:?}");
        }
    }
    let missing = migrate(&url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent.pem",
    ));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("sslrootcert /nonexistent.pem"));

    // Serving ends the same way: the certificate is a configuration error, not an outage.
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        config_text(
            free_port(),
            &url("localhost", &ca_query("verify-full", &other)),
            "",
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = output_within(
        command(&dir.0, &config).arg("serve"),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // Serving: the pools and the notification connection all go over TLS.
    let dir = TempDir::new();
    let port = free_port();
    let config = dir.0.join("gateway.toml");
    std::fs::write(
        &config,
        config_text(port, &url("localhost", &ca_query("verify-full", &ca)), ""),
    )
    .unwrap();
    let mut child = command(&dir.0, &config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/ready");
    wait_for_status(&ready, 200, Duration::from_secs(20), "not ready over TLS").await;
    let r = client
        .post(format!("http://127.0.0.1:{port}/auth/register"))
        .json(&serde_json::json!({"email": "tls@example.com", "password": "TlsPassword123!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let admin = pg(&format!(
        "postgres://postgres@/postgres?host={}&port={}",
        cluster.dir.display(),
        cluster.port
    ))
    .await;
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'sentinel-gateway'",
            &[],
        )
        .await
        .unwrap();
    let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
    assert!(ssl.len() >= 2 && ssl.iter().all(|s| *s), "{ssl:?}");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();
}
