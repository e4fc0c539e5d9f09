//! Zero-downtime upgrade and configuration reload (`serve --upgrade`): under steady load the
//! running gateway hands its listening sockets (public and admin) to a new process started with
//! a changed configuration; no request fails, and the new routes answer afterwards. Also
//! `serve --daemon` (for a `Type=forking` systemd unit) and the start-up errors.

use std::io::Write;
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
    // Waiting for the sockets is the normal course of an upgrade, not an error.
    assert!(!log.contains("No incoming socket transfer"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
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

/// Starts the gateway of `setup` (no routes) and waits until it is ready.
async fn serve_ready(setup: &Setup, log: &str) -> Child {
    setup.write("", "http://localhost:3000");
    let child = setup.serve(&[], log);
    wait_for_status(
        &format!("{}/ready", setup.base()),
        200,
        Duration::from_secs(30),
        "not ready",
    )
    .await;
    child
}

/// Tries to hand `upgrade.sock` a listening socket of its own, over and over, as whoever it
/// runs as; prints `sent` for each descriptor it got into a connection, `denied` for each
/// connection refused to it.
const HIJACKER: &str = r#"
import socket, sys, time
path, binds = sys.argv[1], sys.argv[2]
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen(16)
while True:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        socket.send_fds(s, [binds.encode()], [own.fileno()])
        print("sent", flush=True)
    except PermissionError:
        print("denied", flush=True)
    except OSError:
        pass
    s.close()
    time.sleep(0.002)
"#;

fn hijacker(setup: &Setup, uid: Option<u32>) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(HIJACKER)
        .arg(setup.dir.0.join("run/upgrade.sock"))
        .arg(format!(
            "127.0.0.1:{} 127.0.0.1:{}",
            setup.port, setup.admin
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.spawn().unwrap()
}

/// `GET /health`'s status, or `None` if there is no answer within `within` (a socket
/// listened on by someone who never accepts).
async fn health_within(setup: &Setup, within: Duration) -> Option<u16> {
    let client = reqwest::Client::builder().timeout(within).build().unwrap();
    let r = client.get(format!("{}/health", setup.base())).send().await;
    r.ok().map(|r| r.status().as_u16())
}

/// SIGTERM, and the gateway gone within 10 s.
fn terminate(gateway: &mut Child) {
    unsafe {
        libc::kill(gateway.id() as i32, libc::SIGTERM);
    }
    tokio::task::block_in_place(|| wait_exit(gateway, Duration::from_secs(10)));
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// What a hijacker printed, once it is stopped.
fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_user_cannot_take_over_the_upgrade_hand_over() {
    if !is_root() {
        eprintln!("skipped: needs root to run a process as another user");
        return;
    }
    let setup = Setup::new().await;
    // A runtime directory others may look into (not write to) is accepted: the hand-over
    // socket itself decides who gets in.
    use std::os::unix::fs::PermissionsExt;
    let run = setup.dir.0.join("run");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _guard = KillOnDrop(run.join("sentinel-gateway.pid"));
    let mut old = serve_ready(&setup, "old.log").await;

    // Two processes race the old gateway to the hand-over socket from before the upgrade
    // starts: another user (nobody), and one of the gateway's own user that is not the
    // gateway being replaced.
    let nobody = hijacker(&setup, Some(65534));
    let same_user = hijacker(&setup, None);
    let mut new = setup.serve(&["--upgrade"], "new.log");
    let status = tokio::task::block_in_place(|| wait_exit(&mut old, Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (nobody, same_user) = (stop(nobody), stop(same_user));
    let log = std::fs::read_to_string(setup.dir.0.join("new.log")).unwrap();

    // The new gateway serves on the old one's sockets, not on a hijacker's.
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new gateway exited: {log}"
    );
    assert_eq!(setup.pid_file(), new.id());
    assert_eq!(
        health_within(&setup, Duration::from_secs(5)).await,
        Some(200)
    );
    // The other user never got a connection; the same user's process got one and was refused.
    assert!(!nobody.contains("sent"), "{nobody}");
    assert!(nobody.contains("denied"), "{nobody}");
    assert!(same_user.contains("sent"), "{same_user}");
    assert!(
        log.contains("refused a socket hand-over from a process that is not the gateway"),
        "{log}"
    );
    terminate(&mut new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_directory_another_user_could_write_to_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let setup = Setup::new().await;
    setup.write("", "http://localhost:3000");
    let run = setup.dir.0.join("run");
    let refused = |needle: &str| {
        let out = output_within(
            command(&setup.dir.0, &setup.config).arg("serve"),
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    };
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();
    refused("is writable by group or others (mode 777");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
        refused("is owned by uid 65534, not by this user");
    }
    // One that does not exist yet is made private.
    std::fs::remove_dir_all(&run).unwrap();
    let _guard = KillOnDrop(run.join("sentinel-gateway.pid"));
    let mut gateway = setup.serve(&[], "made.log");
    wait_for_status(
        &format!("{}/health", setup.base()),
        200,
        Duration::from_secs(30),
        "not serving",
    )
    .await;
    let mode = std::fs::metadata(&run).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    terminate(&mut gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_signals_only_the_gateway_never_the_pid_a_file_names() {
    let setup = Setup::new().await;
    let pid_path = setup.dir.0.join("run/sentinel-gateway.pid");
    let _guard = KillOnDrop(pid_path.clone());
    let mut old = serve_ready(&setup, "old.log").await;
    let mut bystander = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let upgrade_fails = |needle: &str| {
        let out = output_within(
            command(&setup.dir.0, &setup.config).args(["serve", "--upgrade"]),
            Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    };

    // The file rewritten in place: the gateway still holds it, and it is not the pid named.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&pid_path)
        .unwrap()
        .write_all(format!("{}\n", bystander.id()).as_bytes())
        .unwrap();
    upgrade_fails(&format!(
        "names pid {} but the gateway holding it is pid {}",
        bystander.id(),
        old.id()
    ));
    // A new file in its place (nobody holds it): the pid it names is no gateway.
    let other = setup.dir.0.join("run/other");
    std::fs::write(&other, format!("{}\n", bystander.id())).unwrap();
    std::fs::rename(&other, &pid_path).unwrap();
    upgrade_fails("is not running");

    assert!(
        bystander.try_wait().unwrap().is_none(),
        "the bystander was signalled"
    );
    assert!(
        old.try_wait().unwrap().is_none(),
        "the gateway was signalled"
    );
    assert_eq!(
        health_within(&setup, Duration::from_secs(5)).await,
        Some(200)
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    terminate(&mut old);
}
