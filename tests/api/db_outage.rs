//! PostgreSQL going away and coming back, on a cluster this test owns (initdb + pg_ctl on a
//! port of its own), never the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::*;

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    versions.sort();
    versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

/// Runs a PostgreSQL tool as the `postgres` user when we are root (initdb refuses root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).output().expect("run a PostgreSQL tool")
}

/// [`as_postgres`], failing the test with the tool's stderr when it does not succeed.
fn must_as_postgres(program: &Path, args: &[&str]) {
    let out = as_postgres(program, args);
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct OwnCluster {
    dir: PathBuf,
    port: u16,
}

impl OwnCluster {
    fn create() -> OwnCluster {
        let dir = std::env::temp_dir().join(format!("sg-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(&dir)
                .status()
                .unwrap();
        }
        let data = dir.join("data");
        must_as_postgres(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let cluster = OwnCluster {
            dir,
            port: free_port(),
        };
        cluster.start();
        cluster
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        must_as_postgres(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            &pg_bin("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_database_outage_degrades_gracefully_and_recovers_without_a_restart() {
    let cluster = OwnCluster::create();
    let up = Upstream::start().await;
    let gateway = Instance::start(
        &cluster.url(),
        &route("/api/", &[up.addr()], "required", ""),
    )
    .await;
    let base = gateway.base.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let r = client
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({"email": "outage@example.com", "password": "OutagePassword1!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get_status(&client, &format!("{base}/api/x"), Some(&token)).await,
        200
    );

    cluster.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Liveness stays, readiness goes, auth endpoints answer 503 JSON within a bounded wait.
    assert_eq!(
        get_status(&client, &format!("{base}/health"), None).await,
        200
    );
    let started = Instant::now();
    let r = client.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    let started = Instant::now();
    let r = client
        .post(format!("{base}/auth/token"))
        .form(&[
            ("username", "outage@example.com"),
            ("password", "OutagePassword1!"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.json::<serde_json::Value>().await.unwrap()["detail"].is_string());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // A user verified before the outage keeps getting through, quickly.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            get_status(&client, &format!("{base}/api/x"), Some(&token)).await,
            200
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    cluster.start();
    let back = Instant::now();
    loop {
        let ready = get_status(&client, &format!("{base}/ready"), None).await == 200;
        let login = client
            .post(format!("{base}/auth/token"))
            .form(&[
                ("username", "outage@example.com"),
                ("password", "OutagePassword1!"),
            ])
            .send()
            .await
            .unwrap()
            .status()
            == 200;
        if ready && login {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not recovered after {:?}",
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
