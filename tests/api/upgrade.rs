//! Zero-downtime upgrade and configuration reload (`serve --upgrade`): under steady load the
//! running gateway hands its listening sockets (public and admin) to a new process started with
//! a changed configuration; no request fails, and the new routes answer afterwards. Also
//! `serve --daemon` (for a `Type=forking` systemd unit) and the start-up errors.

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::*;

const PASSWORD: &str = "UpgradePassword1!";

struct Setup {
    db: TestDb,
    dir: TempDir,
    port: u16,
    admin: u16,
    config: std::path::PathBuf,
}

impl Setup {
    async fn new() -> Setup {
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.0.join("run")).unwrap();
        Setup {
            db: TestDb::create().await,
            config: dir.0.join("gateway.toml"),
            dir,
            port: free_port(),
            admin: free_port(),
        }
    }

    /// Writes the configuration with these routes (and CORS origins).
    fn write(&self, routes: &str, origin: &str) {
        let run = self.dir.0.join("run");
        std::fs::write(
            &self.config,
            config_text_with(
                self.port,
                &self.db.url,
                &Tables {
                    server: format!(
                        "runtime_dir = \"{}\"\nshutdown_grace_seconds = 2\n",
                        run.display()
                    ),
                    ..Tables::default()
                },
                &format!(
                    "[admin]\nlisten = \"127.0.0.1:{}\"\n\n[cors]\norigins = [\"{origin}\"]\n\n{routes}",
                    self.admin
                ),
            ),
        )
        .unwrap();
    }

    fn serve(&self, args: &[&str], log: &str) -> Child {
        let log = std::fs::File::create(self.dir.0.join(log)).unwrap();
        command(&self.dir.0, &self.config)
            .arg("serve")
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid_file(&self) -> u32 {
        read_pid(&self.dir.0.join("run/sentinel-gateway.pid"))
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the old gateway did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clients sending keep-alive requests one after another until told to stop; every failure
/// (an error, or any status but 200) is kept.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: String, token: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let tasks = (0..clients)
            .map(|_| {
                let (url, token, stop, done) = (
                    url.clone(),
                    token.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&done),
                );
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut failures = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).bearer_auth(&token).send().await {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                            }
                            Ok(r) => failures.push(format!("status {}", r.status())),
                            Err(e) => failures.push(format!("{e:?}")),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    failures
                })
            })
            .collect();
        Load { stop, done, tasks }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.done.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request_and_the_new_configuration_answers() {
    let setup = Setup::new().await;
    let old_upstream = Upstream::start().await;
    let new_upstream = Upstream::start().await;
    setup.write(
        &route("/api/", &[old_upstream.addr()], "required", ""),
        "http://old.example",
    );
    let _guard = KillOnDrop(setup.dir.0.join("run/sentinel-gateway.pid"));
    let mut old = setup.serve(&[], "old.log");
    wait_for_status(
        &format!("{}/ready", setup.base()),
        200,
        Duration::from_secs(30),
        "not ready",
    )
    .await;
    let client = reqwest::Client::new();
    let token: serde_json::Value = client
        .post(format!("{}/auth/register", setup.base()))
        .json(&serde_json::json!({"email": "upgrade@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    assert_eq!(setup.pid_file(), old.id());

    let load = Load::start(format!("{}/api/x", setup.base()), token.clone(), 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The new configuration: another upstream for /api/, a new public route, another origin.
    setup.write(
        &format!(
            "{}{}",
            route("/api/", &[new_upstream.addr()], "required", ""),
            route("/new/", &[new_upstream.addr()], "public", "")
        ),
        "http://new.example",
    );
    let mut new = setup.serve(&["--upgrade"], "new.log");
    let status = tokio::task::block_in_place(|| wait_exit(&mut old, Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (done, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {done} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done > 200, "{done}");
    assert!(new.try_wait().unwrap().is_none(), "the new gateway exited");
    assert_eq!(setup.pid_file(), new.id());

    // The new process serves with the new configuration, on the same sockets.
    let r = client
        .get(format!("{}/new/hello", setup.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = new_upstream.served().await;
    let r = client
        .get(format!("{}/api/x", setup.base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(new_upstream.served().await, before + 1);
    let r = client
        .get(format!("{}/health", setup.base()))
        .header("origin", "http://new.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://new.example"
    );
    let metrics = client
        .get(format!("http://127.0.0.1:{}/metrics", setup.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    unsafe {
        libc::kill(new.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::block_in_place(|| wait_exit(&mut new, Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(setup.dir.0.join("new.log")).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn a_daemon_returns_once_serving_and_upgrades_in_the_background() {
    let setup = Setup::new().await;
    setup.write("", "http://localhost:3000");
    let pid_path = setup.dir.0.join("run/sentinel-gateway.pid");
    let _guard = KillOnDrop(pid_path.clone());
    let started = Instant::now();
    let status = setup.serve(&["--daemon"], "daemon.log").wait().unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        read(&setup.dir.0.join("daemon.log"))
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    // Serving when the command returned.
    let health = reqwest::get(format!("{}/health", setup.base()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let first = setup.pid_file();
    assert!(alive(first));

    let status = setup
        .serve(&["--upgrade", "--daemon"], "daemon-upgrade.log")
        .wait()
        .unwrap();
    assert!(
        status.success(),
        "{status:?}: {}",
        read(&setup.dir.0.join("daemon-upgrade.log"))
    );
    let second = setup.pid_file();
    assert_ne!(first, second);
    wait_until_gone(
        first,
        Duration::from_secs(30),
        "the first daemon did not exit",
    )
    .await;
    let health = reqwest::get(format!("{}/health", setup.base()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    unsafe {
        libc::kill(second as i32, libc::SIGTERM);
    }
    wait_until_gone(second, Duration::from_secs(10), "the daemon did not stop").await;
    assert!(!pid_path.exists(), "the pid file outlived its process");
}

#[tokio::test]
async fn a_daemon_that_cannot_start_exits_1_with_its_error() {
    let setup = Setup::new().await;
    setup.write("", "http://localhost:3000");
    let taken = std::net::TcpListener::bind(format!("127.0.0.1:{}", setup.port)).unwrap();
    let out = command(&setup.dir.0, &setup.config)
        .args(["serve", "--daemon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    drop(taken);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[tokio::test]
async fn an_upgrade_with_nothing_to_take_over_is_one_line() {
    let setup = Setup::new().await;
    setup.write("", "http://localhost:3000");
    let out = command(&setup.dir.0, &setup.config)
        .args(["serve", "--upgrade"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no running gateway to take over from"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Without a runtime directory there is no upgrade socket to meet at.
    std::fs::write(&setup.config, config_text(setup.port, &setup.db.url, "")).unwrap();
    let out = command(&setup.dir.0, &setup.config)
        .args(["serve", "--upgrade"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--upgrade needs server.runtime_dir"),
        "{stderr}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
