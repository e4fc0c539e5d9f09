//! The README's nginx (`auth_request`) and Caddy (`forward_auth`) set-ups, as written there,
//! run for real in front of the demo upstream with the gateway deciding: a signed-in request
//! passes with the user's identity, one without a token and one a rule refuses do not reach
//! the upstream, an anonymous request to a public rule passes with no identity, and a
//! client's own `X-User-Id` never reaches the upstream through either proxy (nor a proxy's
//! placeholder). Debian's `nginx` and `caddy` are installed by scripts/test.sh.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::admin_cli::{cli, stdout};
use crate::forward_auth::forward_config;
use crate::helpers::*;

const PASSWORD: &str = "BesidePassword1!";

/// The fenced block of `language` in the README that contains `needle`.
fn readme_block(language: &str, needle: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .split(&format!("```{language}\n"))
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_string())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no {language} block with {needle:?} in the README"))
}

/// The README's addresses replaced by the test's.
fn placed(block: &str, gateway: &str, upstream: &str) -> String {
    block
        .replace("127.0.0.1:8000", gateway)
        .replace("127.0.0.1:9000", upstream)
}

/// A proxy process, killed on drop.
struct Proxy {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    async fn wait_until_listening(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{what} exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{what} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn binary(name: &str) -> &'static str {
    let found = [
        "/usr/sbin/nginx",
        "/usr/bin/nginx",
        "/usr/bin/caddy",
        "/usr/local/bin/caddy",
    ]
    .into_iter()
    .find(|p| p.ends_with(name) && Path::new(p).exists());
    found.unwrap_or_else(|| panic!("{name} is installed (scripts/test.sh installs Debian's)"))
}

async fn nginx(gateway: &str, upstream: &str) -> Proxy {
    let dir = TempDir::new();
    let port = free_port();
    let server = placed(&readme_block("nginx", "auth_request"), gateway, upstream)
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
    let d = dir.0.display();
    // Only the server block is the README's; around it, what a test run needs (paths of its
    // own, one process in the foreground).
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    let config = format!(
        "{user}daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n\
         proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n{server}\n}}\n"
    );
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let log = dir.0.join("error.log");
    let child = Command::new(binary("nginx"))
        .arg("-e")
        .arg(&log)
        .arg("-p")
        .arg(&dir.0)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run nginx");
    let mut proxy = Proxy {
        child,
        port,
        log,
        _dir: dir,
    };
    proxy.wait_until_listening("nginx").await;
    proxy
}

async fn caddy(gateway: &str, upstream: &str) -> Proxy {
    let dir = TempDir::new();
    let port = free_port();
    let site = placed(
        &readme_block("caddyfile", "forward_auth"),
        gateway,
        upstream,
    )
    .replace(":8080 {", &format!("http://127.0.0.1:{port} {{"));
    // No admin endpoint (tests run side by side), nothing but the README's site.
    let config = format!("{{\n admin off\n}}\n{site}");
    let path = dir.0.join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    let log = dir.0.join("caddy.log");
    let child = Command::new(binary("caddy"))
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", &dir.0)
        .env("XDG_DATA_HOME", dir.0.join("data"))
        .env("XDG_CONFIG_HOME", dir.0.join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("run caddy");
    let mut proxy = Proxy {
        child,
        port,
        log,
        _dir: dir,
    };
    proxy.wait_until_listening("caddy").await;
    proxy
}

/// A request through the proxy: status, and what the upstream saw (for a 200).
async fn through(
    client: &reqwest::Client,
    proxy: &Proxy,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<Echo>) {
    let mut request = client
        .get(format!("http://127.0.0.1:{}{path}", proxy.port))
        // The client's own identity, in two spellings: never to reach the upstream.
        .header("X-User-Id", "spoofed-user")
        .header("x-user-roles", "admin")
        .header("X-Identity-Assertion", "forged");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let echo = if status == 200 {
        Some(Echo(response.json::<Value>().await.unwrap()))
    } else {
        None
    };
    (status, echo)
}

/// No client-sent identity and no placeholder in anything the upstream saw (`roles`: the
/// caller's own, which may be what the client also sent).
fn clean(echo: &Echo, what: &str, roles: &str) {
    for (name, value) in echo.0["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
    {
        assert!(
            !["spoofed-user", "forged"].contains(&value) && !value.contains('{'),
            "{what}: the upstream saw {name}: {value}"
        );
        if name == "x-user-roles" {
            assert_eq!(
                value, roles,
                "{what}: the client's roles reached the upstream"
            );
        }
    }
}

async fn exercise(app: &TestApp, proxy: &Proxy, what: &str, up: &Upstream) {
    let client = reqwest::Client::new();
    let (token, user_id) = app
        .registered(&format!("{what}@example.com"), PASSWORD)
        .await;
    let (boss, boss_id) = app
        .registered(&format!("{what}-boss@example.com"), PASSWORD)
        .await;
    stdout(&cli(
        app,
        &["grant", &format!("{what}-boss@example.com"), "admin"],
        "",
    ));
    let before = up.served().await;

    // Signed in: through, with the user's identity only.
    let (status, echo) = through(&client, proxy, "/api/items", Some(&token)).await;
    assert_eq!(status, 200, "{what}");
    let echo = echo.unwrap();
    assert_eq!(echo.all("x-user-id"), [user_id], "{what}");
    assert_eq!(echo.one("x-user-aal").as_deref(), Some("aal1"), "{what}");
    assert!(echo
        .one("x-identity-assertion")
        .is_some_and(|a| a.split('.').count() == 3));
    clean(&echo, what, "");

    // No token, a bad token, a rule that refuses, a deny rule: the upstream sees none of them.
    for (path, who, expected) in [
        ("/api/items", None, 401),
        ("/api/items", Some("not-a-token"), 401),
        ("/api/admin/users", Some(token.as_str()), 403),
        ("/api/secret/x", Some(token.as_str()), 403),
    ] {
        let (status, _) = through(&client, proxy, path, who).await;
        assert_eq!(status, expected, "{what}: {path}");
    }

    // A path under no route: the gateway's 404, which nginx's auth_request turns into a 500
    // (only 401 and 403 pass through it; docs/upstreams.md says so) and Caddy passes on.
    let (status, _) = through(&client, proxy, "/nowhere", Some(&token)).await;
    assert_eq!(status, if what == "nginx" { 500 } else { 404 }, "{what}");

    // A role: the admin passes the rule the user did not (granted a moment ago: within 1 s).
    let deadline = Instant::now() + Duration::from_secs(2);
    let echo = loop {
        match through(&client, proxy, "/api/admin/users", Some(&boss)).await {
            (200, Some(echo)) => break echo,
            (status, _) => {
                assert!(Instant::now() < deadline, "{what}: the admin got {status}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(echo.all("x-user-id"), [boss_id], "{what}");
    assert_eq!(echo.one("x-user-roles").as_deref(), Some("admin"), "{what}");
    clean(&echo, what, "admin");

    // Anonymous on a public rule: through, with no identity (empty at most) and none of the
    // client's.
    let (status, echo) = through(&client, proxy, "/api/health", None).await;
    assert_eq!(status, 200, "{what}");
    let echo = echo.unwrap();
    clean(&echo, what, "");
    for name in [
        "x-user-id",
        "x-user-email",
        "x-user-roles",
        "x-identity-assertion",
    ] {
        assert!(
            echo.all(name).iter().all(String::is_empty),
            "{what}: {name} = {:?}",
            echo.all(name)
        );
    }
    // Three requests reached the upstream: the user's, the admin's and the anonymous one.
    assert_eq!(up.served().await - before, 3, "{what}");
}

#[tokio::test]
async fn the_readme_nginx_set_up_passes_only_the_gateways_identity() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: forward_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let proxy = nginx(&format!("127.0.0.1:{}", app.port), &up.addr()).await;
    exercise(&app, &proxy, "nginx", &up).await;
}

#[tokio::test]
async fn the_readme_caddy_set_up_passes_only_the_gateways_identity() {
    let up = Upstream::start().await;
    let app = TestApp::spawn_with(Spawn {
        config_extra: forward_config(&up.addr()),
        ..Spawn::default()
    })
    .await;
    let proxy = caddy(&format!("127.0.0.1:{}", app.port), &up.addr()).await;
    exercise(&app, &proxy, "caddy", &up).await;
}
