//! `TestApp`: the real binary on a free port against a fresh PostgreSQL database of its own,
//! stopped with SIGTERM and its database dropped when the test ends.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SEED_SECRET: &str = "seed-fixture-secret-change-me-0123456789abcdef";

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn db_url(name: &str) -> String {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seed")
        .join(name)
}

pub fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

pub async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh database, dropped on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// Dropped with this handle (false for [`TestDb::share`]'s handles).
    owned: bool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("sg_test_{}", uuid::Uuid::new_v4().simple());
        pg(&admin_url())
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb {
            url: db_url(&name),
            name,
            owned: true,
        }
    }

    /// Another handle on the same database, for a second gateway; the database is dropped
    /// with the first handle only.
    pub fn share(&self) -> TestDb {
        TestDb {
            name: self.name.clone(),
            url: self.url.clone(),
            owned: false,
        }
    }

    /// The seed backend's schema and rows, as it left them.
    pub async fn load_seed(&self) {
        let client = pg(&self.url).await;
        for file in ["schema.sql", "users.sql"] {
            let sql = std::fs::read_to_string(fixture(file)).unwrap();
            client.batch_execute(&sql).await.unwrap();
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        pg(&self.url).await
    }

    /// How many rows the users table holds.
    pub async fn user_count(&self) -> i64 {
        self.client()
            .await
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&admin_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How to start a gateway.
#[derive(Default)]
pub struct Spawn {
    pub config_extra: String,
    /// Keys added to the `[server]` table.
    pub server_extra: String,
    /// Keys added to the `[database]` table.
    pub database_extra: String,
    /// Keys added to the `[auth]` table.
    pub auth_extra: String,
    /// The port to listen on (default: a free one).
    pub port: Option<u16>,
    /// A hosts file the gateway resolves names with instead of `/etc/hosts` (it then runs in
    /// a mount namespace of its own, which needs root).
    pub hosts_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub seed_data: bool,
}

pub struct TestApp {
    pub base: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub db: TestDb,
    child: Option<Child>,
    pub dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("sg-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sentinel-gateway")
}

/// The config file a test gateway uses.
/// Rate limits stay out of the way of tests that are not about them.
pub fn config_text(port: u16, db_url: &str, extra: &str) -> String {
    config_text_with(port, db_url, &Tables::default(), extra)
}

/// Keys added to the tables every test config has.
#[derive(Default, Clone)]
pub struct Tables {
    /// `[server]` keys; may name the listen address itself (by host name, say).
    pub server: String,
    pub database: String,
    pub auth: String,
}

/// [`config_text`] with extra keys in the `[server]`, `[database]` and `[auth]` tables.
pub fn config_text_with(port: u16, db_url: &str, tables: &Tables, extra: &str) -> String {
    let limits = if extra.contains("[rate_limit]") {
        ""
    } else {
        "[rate_limit]\nlogin_per_ip_per_minute = 100000\nlogin_per_account_per_minute = 100000\n\
         register_per_ip_per_minute = 100000\nrefresh_per_ip_per_minute = 100000\n\n"
    };
    // The admin listener's default port would be shared by every gateway a test starts.
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n"
    };
    // Tests stop their gateways at once (SIGTERM's drain is tested where it matters).
    let grace = if tables.server.contains("shutdown_grace_seconds") {
        ""
    } else {
        "shutdown_grace_seconds = 0\n"
    };
    let listen = if tables.server.contains("listen =") {
        String::new()
    } else {
        format!("listen = \"127.0.0.1:{port}\"\n")
    };
    // `SENTINEL_TEST_HTTP1_ENGINE=pingora`: the whole suite on the other HTTP/1 engine
    // (scripts/test.sh runs it both ways).
    let engine = match std::env::var("SENTINEL_TEST_HTTP1_ENGINE") {
        Ok(engine) if !tables.server.contains("http1_engine") => {
            format!("http1_engine = \"{engine}\"\n")
        }
        _ => String::new(),
    };
    let Tables {
        server,
        database,
        auth,
    } = tables;
    format!(
        "[server]\n{listen}threads = 2\n{grace}{engine}{server}\n\
         [database]\nurl = \"{db_url}\"\n{database}\n\
         [auth]\nsecret_key = \"{SEED_SECRET}\"\n{auth}\n\
         [log]\nlevel = \"warn\"\nformat = \"text\"\n\n{admin}{limits}{extra}"
    )
}

/// A command for the binary with a clean environment (no DATABASE_URL etc. from outside).
pub fn command(dir: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .current_dir(dir)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null());
    cmd
}

/// [`command`] in a mount namespace of its own where `hosts` is `/etc/hosts`, so that a test
/// decides (and changes) what names resolve to. Needs root, as the tests run in CI.
pub fn with_hosts_file(dir: &Path, config: &Path, hosts: &Path) -> Command {
    let mut cmd = Command::new("/usr/bin/unshare");
    cmd.env_clear()
        .current_dir(dir)
        .args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg("/usr/bin/mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(binary())
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null());
    cmd
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(Spawn::default()).await
    }

    pub async fn spawn_seeded() -> TestApp {
        TestApp::spawn_with(Spawn {
            seed_data: true,
            ..Spawn::default()
        })
        .await
    }

    pub async fn spawn_with(spec: Spawn) -> TestApp {
        let db = TestDb::create().await;
        if spec.seed_data {
            db.load_seed().await;
        }
        TestApp::start_on(db, spec).await
    }

    /// Starts a gateway on an existing database.
    pub async fn start_on(db: TestDb, spec: Spawn) -> TestApp {
        let dir = TempDir::new();
        let port = spec.port.unwrap_or_else(free_port);
        let config = dir.0.join("gateway.toml");
        std::fs::write(
            &config,
            config_text_with(
                port,
                &db.url,
                &Tables {
                    server: spec.server_extra.clone(),
                    database: spec.database_extra.clone(),
                    auth: spec.auth_extra.clone(),
                },
                &spec.config_extra,
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.0.join("gateway.log")).unwrap();
        let mut cmd = match &spec.hosts_file {
            Some(hosts) => with_hosts_file(&dir.0, &config, hosts),
            None => command(&dir.0, &config),
        };
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("start the gateway binary");
        let mut app = TestApp {
            base: format!("http://127.0.0.1:{port}"),
            port,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            db,
            child: Some(child),
            dir,
        };
        app.wait_until_healthy().await;
        app
    }

    /// Waits until the gateway is ready: listening, its database reached and migrated.
    async fn wait_until_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/ready")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "gateway exited with {status} before it was healthy:\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!("gateway not healthy after 30 s:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.0.join("gateway.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The first log line containing `needle`, and the whole log at that moment; waits up to
    /// 5 s, since lines are written by a background thread.
    pub async fn log_line(&self, needle: &str) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                return (line.to_string(), logs);
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// (current RSS, peak RSS) of the gateway process, in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The status of a plain GET of `path`.
    pub async fn status(&self, path: &str) -> u16 {
        get_status(&self.client, &self.url(path), None).await
    }

    /// `GET path`, answered in full.
    pub async fn get(&self, path: &str) -> Answer {
        Answer::of(self.client.get(self.url(path)).send().await.unwrap()).await
    }

    /// `GET path` with a bearer token.
    pub async fn get_as(&self, path: &str, token: &str) -> Answer {
        Answer::of(
            self.client
                .get(self.url(path))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGTERM, then wait up to `limit`; returns the exit status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        while started.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub async fn register(&self, email: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/auth/register"))
            .json(&serde_json::json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap()
    }

    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.client
            .post(self.url("/auth/token"))
            .form(&[("username", username), ("password", password)])
            .send()
            .await
            .unwrap()
    }

    pub async fn login_multipart(&self, username: &str, password: &str) -> reqwest::Response {
        let form = reqwest::multipart::Form::new()
            .text("username", username.to_string())
            .text("password", password.to_string());
        self.client
            .post(self.url("/auth/token"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn me(&self, token: &str) -> reqwest::Response {
        self.client
            .get(self.url("/auth/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers a user and returns (token, user id).
    pub async fn registered(&self, email: &str, password: &str) -> (String, String) {
        let r = self.register(email, password).await;
        assert_eq!(r.status(), 200, "register {email}");
        let body: Value = r.json().await.unwrap();
        (
            body["access_token"].as_str().unwrap().to_string(),
            body["user"]["id"].as_str().unwrap().to_string(),
        )
    }
}

/// Another gateway process, on a database that someone else owns; SIGTERM on drop.
pub struct Instance {
    pub base: String,
    child: Child,
    _dir: TempDir,
}

impl Instance {
    pub async fn start(db_url: &str, extra: &str) -> Instance {
        let dir = TempDir::new();
        let port = free_port();
        let config = dir.0.join("gateway.toml");
        std::fs::write(&config, config_text(port, db_url, extra)).unwrap();
        let log = std::fs::File::create(dir.0.join("gateway.log")).unwrap();
        let child = command(&dir.0, &config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        // Ready: listening, its database reached and migrated.
        wait_for_status(
            &format!("{base}/ready"),
            200,
            Duration::from_secs(30),
            "gateway instance not ready",
        )
        .await;
        Instance {
            base,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

/// The demo upstream binary on a free port; killed on drop.
pub struct Upstream {
    pub port: u16,
    at: std::net::SocketAddr,
    child: Child,
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Upstream {
        Upstream::start_at(&format!("127.0.0.1:{port}")).await
    }

    /// On a loopback address of the test's choice (any of 127.0.0.0/8).
    pub async fn start_at(addr: &str) -> Upstream {
        let at: std::net::SocketAddr = addr.parse().unwrap();
        let port = at.port();
        let child = Command::new(env!("CARGO_BIN_EXE_demo-upstream"))
            .arg(addr)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .expect("start demo-upstream");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(at).await.is_err() {
            assert!(Instant::now() < deadline, "demo-upstream did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Upstream { port, at, child }
    }

    pub fn addr(&self) -> String {
        self.at.to_string()
    }

    /// How many requests reached this upstream so far.
    pub async fn served(&self) -> u64 {
        reqwest::get(format!("http://{}/__requests", self.addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[routes]]` entries for a test config.
pub fn route(prefix: &str, upstreams: &[String], auth: &str, extra: &str) -> String {
    let list: Vec<String> = upstreams.iter().map(|u| format!("\"{u}\"")).collect();
    format!(
        "[[routes]]\nprefix = \"{prefix}\"\nupstreams = [{}]\nauth = \"{auth}\"\n{extra}\n",
        list.join(", ")
    )
}

/// What the demo upstream says it received.
pub struct Echo(pub Value);

impl Echo {
    /// Every value of a header, by exact (lower-case) name.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pair| pair[0].as_str() == Some(name))
            .map(|pair| pair[1].as_str().unwrap().to_string())
            .collect()
    }

    pub fn one(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} sent {} times: {all:?}", all.len());
        all.into_iter().next()
    }

    /// Names of every header the upstream saw.
    pub fn names(&self) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| pair[0].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// Polls `GET url` until it answers `status` (connection errors count as not yet); panics with
/// `what` after `within`.
pub async fn wait_for_status(url: &str, status: u16, within: Duration, what: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    while !client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == status)
    {
        assert!(Instant::now() < deadline, "{what} after {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of a GET of `url`, with a bearer token if given.
pub async fn get_status(client: &reqwest::Client, url: &str, token: Option<&str>) -> u16 {
    let mut req = client.get(url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A response as (status, selected headers, body).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub async fn of(r: reqwest::Response) -> Answer {
        Answer {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.unwrap(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Raw bytes to the gateway over a plain socket; returns everything it answered until it
/// closed or went quiet.
pub async fn raw(port: u16, request: &[u8]) -> String {
    raw_within(port, request, Duration::from_millis(1500)).await
}

/// [`raw`], waiting up to `quiet` for each next read (for answers that take a while: a login's
/// password hashing on a busy machine).
pub async fn raw_within(port: u16, request: &[u8], quiet: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Asserts the shape the seed's `UserResponse` has, and `email_verified` and `roles` after its
/// fields.
pub fn assert_user_shape(user: &Value) {
    let keys: Vec<&str> = user
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "email",
            "full_name",
            "id",
            "is_active",
            "created_at",
            "email_verified",
            "roles"
        ],
        "{user}"
    );
    assert!(user["email_verified"].is_boolean(), "{user}");
    uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();
    let created = user["created_at"].as_str().unwrap();
    chrono::DateTime::parse_from_rfc3339(created)
        .unwrap_or_else(|e| panic!("created_at {created:?} is not RFC 3339: {e}"));
    assert!(created.ends_with('Z'), "{created}");
}

/// Asserts the shape of the seed's `TokenResponse`.
pub fn assert_token_shape(body: &Value) {
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // The seed's three, then what sessions add.
    assert_eq!(
        keys,
        [
            "access_token",
            "token_type",
            "user",
            "refresh_token",
            "expires_in"
        ],
        "{body}"
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3);
    assert!(
        body["refresh_token"].as_str().unwrap().len() >= 64,
        "{body}"
    );
    assert!(body["expires_in"].as_i64().unwrap() > 0, "{body}");
    assert_user_shape(&body["user"]);
}

/// An upstream on a plain socket that records every request head exactly as the gateway wrote
/// it (byte for byte, names in the case they were sent) and answers each with `reply`, a
/// complete response with a `Content-Length`. Keeps connections alive, as pingora pools them.
pub struct RawUpstream {
    pub port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(reply: &'static [u8]) -> RawUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = pending.drain(..end + 4).collect();
                            seen.lock().unwrap().push(head);
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        RawUpstream { port, heads, task }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<Vec<u8>> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `openssl` with `args` in `dir`, failing the test if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `python3 -m http.server` serving `dir` on 127.0.0.1:`port`; stopped on drop.
pub struct StaticSite(Child);

impl StaticSite {
    pub fn serve(dir: &Path, port: u16) -> StaticSite {
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        StaticSite(child)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The pid in a gateway's pid file.
pub fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Stops whatever runs from this pid file (SIGKILL) when the test ends, passed or not.
pub struct KillOnDrop(pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Runs `cmd` to its end, or kills it after `within` (a gateway that serves when it should
/// have refused to start) and fails.
pub fn output_within(cmd: &mut Command, within: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {within:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Waits until process `pid` is gone, failing with `what` after `within`.
pub async fn wait_until_gone(pid: u32, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis server a test owns (`redis-server` on a free port, nothing saved to disk), which
/// it may stop, freeze and start again on the same port.
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
    /// TLS only (`--tls-port`): its certificate, key and CA.
    tls: Option<[PathBuf; 3]>,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
            tls: None,
        };
        redis.restart().await;
        redis
    }

    /// A Redis that speaks TLS only, with this certificate (clients need no certificate).
    pub async fn start_tls(cert: &Path, key: &Path, ca: &Path) -> OwnRedis {
        let mut redis = OwnRedis {
            port: free_port(),
            child: None,
            tls: Some([cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf()]),
        };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), and waits until it answers.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some([cert, key, ca]) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian's redis-server package)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        if self.tls.is_some() {
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "redis-server (TLS) did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return;
        }
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut pong = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut pong).await.is_ok()
                    && &pong == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (its counts are gone with it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open, nothing answers.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            unsafe {
                libc::kill(child.id() as i32, signal);
            }
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.freeze(false);
        self.stop();
    }
}
