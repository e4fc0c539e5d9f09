//! The container file and the systemd unit, checked as far as this machine allows (it can
//! neither pull base images nor run systemd as its init): hadolint lints the Dockerfile, the
//! container's own command lines (ENTRYPOINT, CMD, HEALTHCHECK, ENV) run the real binary as the
//! image's non-root user, `systemd-analyze` verifies the unit and rates its sandboxing, and
//! the unit's ExecStart and ExecReload run as written (a daemon, then a zero-downtime upgrade).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSTALLED: &str = "/usr/local/bin/sentinel-gateway";
const INSTALLED_CONFIG: &str = "/etc/sentinel-gateway/gateway.toml";

fn tool(name: &str) -> PathBuf {
    // pip puts hadolint in the interpreter's scripts directory, which may not be on PATH.
    let on_path = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    if on_path.status.success() {
        return PathBuf::from(String::from_utf8_lossy(&on_path.stdout).trim());
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .unwrap();
    let path = Path::new(String::from_utf8_lossy(&scripts.stdout).trim()).join(name);
    assert!(
        path.exists(),
        "{name} is missing (scripts/test.sh installs tests/support/requirements.txt)"
    );
    path
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn hadolint_passes_the_dockerfile() {
    let out = Command::new(tool("hadolint"))
        .arg(format!("{ROOT}/Dockerfile"))
        .output()
        .unwrap();
    ok(&out, "hadolint");
}

/// The Dockerfile's instructions that say how the container runs.
struct Image {
    env: BTreeMap<String, String>,
    user: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    healthcheck: Vec<String>,
}

fn image() -> Image {
    let text = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    // Continuation lines joined; only the last stage counts.
    let joined = text.replace("\\\n", " ");
    let last_stage = joined.rsplit("\nFROM ").next().unwrap();
    let array = |line: &str| -> Vec<String> {
        let json = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
        serde_json::from_str(json).unwrap()
    };
    let mut image = Image {
        env: BTreeMap::new(),
        user: String::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
    };
    for line in last_stage.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("ENV ") {
            for pair in rest.split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                image.env.insert(k.to_string(), v.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("USER ") {
            image.user = rest.trim().to_string();
        } else if line.starts_with("ENTRYPOINT ") {
            image.entrypoint = array(line);
        } else if line.starts_with("CMD ") {
            image.cmd = array(line);
        } else if line.starts_with("HEALTHCHECK ") {
            image.healthcheck = array(&line[line.find("CMD ").unwrap()..]);
        }
    }
    image
}

/// `args` as the image runs them: the installed paths replaced by this build's binary and
/// `config`, as user `uid:gid`, with the image's environment (`env` overriding it).
fn as_image_runs(
    args: &[String],
    config: &Path,
    user: &str,
    env: &BTreeMap<String, String>,
) -> Command {
    let (uid, gid) = user.split_once(':').unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.env_clear()
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
        ])
        .current_dir("/");
    for arg in args {
        cmd.arg(match arg.as_str() {
            INSTALLED => binary().to_string(),
            INSTALLED_CONFIG => config.display().to_string(),
            other => other.to_string(),
        });
    }
    cmd.envs(env);
    cmd
}

#[tokio::test]
async fn the_images_commands_run_as_its_non_root_user_and_the_health_check_tells() {
    let image = image();
    assert_eq!(image.user, "65532:65532", "not the distroless nonroot user");
    assert_eq!(image.entrypoint[0], INSTALLED);
    assert!(
        image.healthcheck.contains(&"health".to_string()),
        "{:?}",
        image.healthcheck
    );
    // What the image would hold: the configuration, readable by that user (the directory the
    // tests make is world-readable; the file is written 0644).
    let db = TestDb::create().await;
    let dir = TempDir::new();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, "[log]\nlevel = \"warn\"\n").unwrap();
    let (port, admin) = (free_port(), free_port());
    let mut env = image.env.clone();
    env.insert("SENTINEL_LISTEN".into(), format!("0.0.0.0:{port}"));
    env.insert("SENTINEL_ADMIN_LISTEN".into(), format!("127.0.0.1:{admin}"));
    let runtime = dir.0.join("run");
    env.insert("SENTINEL_RUNTIME_DIR".into(), runtime.display().to_string());
    std::fs::create_dir_all(&runtime).unwrap();
    Command::new("chown")
        .args(["65532:65532", &runtime.display().to_string()])
        .status()
        .unwrap();
    env.insert("DATABASE_URL".into(), db.url.clone());
    env.insert("SECRET_KEY".into(), SEED_SECRET.into());
    let health = |env: &BTreeMap<String, String>| {
        as_image_runs(&image.healthcheck, &config, &image.user, env)
            .output()
            .unwrap()
    };
    let down = health(&env);
    assert!(!down.status.success(), "healthy before it started");

    let mut args = image.entrypoint.clone();
    args.extend(image.cmd.iter().cloned());
    let log = std::fs::File::create(dir.0.join("gateway.log")).unwrap();
    let mut gateway = as_image_runs(&args, &config, &image.user, &env)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for_status(
        &format!("http://127.0.0.1:{port}/ready"),
        200,
        Duration::from_secs(30),
        "the image's command did not serve",
    )
    .await;
    ok(&health(&env), "the image's HEALTHCHECK");
    // It runs as that user.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", gateway.id())).unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    assert!(
        uid_line.split_whitespace().nth(1) == Some("65532") || status.is_empty(),
        "{uid_line}"
    );
    unsafe {
        libc::kill(gateway.id() as i32, libc::SIGTERM);
    }
    let _ = gateway.wait();
    assert!(!health(&env).status.success(), "healthy after it stopped");
}

/// The unit with the installed binary replaced by this build's (systemd-analyze checks that
/// the executable exists).
fn unit_copy(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(format!("{ROOT}/conf/sentinel-gateway.service")).unwrap();
    let path = dir.join("sentinel-gateway.service");
    std::fs::write(&path, text.replace(INSTALLED, binary())).unwrap();
    path
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_its_sandbox() {
    let dir = TempDir::new();
    let unit = unit_copy(&dir.0);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    ok(&out, "systemd-analyze verify");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("exposure level for sentinel-gateway.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}"));
    // systemd's scale: 0 (locked down) to 10 (exposed); below 2 is "OK".
    assert!(level < 2.0, "exposure {level}\n{text}");
    let unit = std::fs::read_to_string(unit).unwrap();
    for setting in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Type=forking",
        "ExecReload=",
    ] {
        assert!(unit.contains(setting), "{setting}");
    }
}

#[tokio::test]
async fn the_units_start_and_reload_commands_serve_and_upgrade() {
    let text = std::fs::read_to_string(format!("{ROOT}/conf/sentinel-gateway.service")).unwrap();
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_string()
    };
    let db = TestDb::create().await;
    let dir = TempDir::new();
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let port = free_port();
    let config = dir.0.join("gateway.toml");
    std::fs::write(&config, config_text(port, &db.url, "")).unwrap();
    // Run a unit command line as systemd would, with the unit's environment.
    let run = |line: String| -> Output {
        let line = line
            .replace(INSTALLED, binary())
            .replace(INSTALLED_CONFIG, &config.display().to_string());
        let mut words = line.split_whitespace();
        let mut cmd = Command::new(words.next().unwrap());
        // Output to a file, as to the journal: a daemon keeps its stdout and stderr open, so
        // reading them to the end (`output()`) would wait for it to stop.
        let log = dir.0.join("unit.log");
        let file = std::fs::File::create(&log).unwrap();
        cmd.args(words)
            .env_clear()
            .env("SENTINEL_RUNTIME_DIR", &runtime)
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let status = cmd.status().unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&log).unwrap_or_default(),
        }
    };
    assert_eq!(
        value("Environment"),
        "SENTINEL_RUNTIME_DIR=/run/sentinel-gateway"
    );
    assert_eq!(
        value("PIDFile"),
        "/run/sentinel-gateway/sentinel-gateway.pid"
    );
    let pid_file = runtime.join("sentinel-gateway.pid");
    let _stop = KillOnDrop(pid_file.clone());
    ok(&run(value("ExecStartPre")), "ExecStartPre");
    ok(&run(value("ExecStart")), "ExecStart");
    let first = read_pid(&pid_file);
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    ok(&run(value("ExecReload")), "ExecReload");
    let second = read_pid(&pid_file);
    assert_ne!(first, second);
    wait_until_gone(
        first,
        Duration::from_secs(30),
        "the first process did not exit",
    )
    .await;
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
    unsafe {
        libc::kill(second as i32, libc::SIGTERM);
    }
    wait_until_gone(
        second,
        Duration::from_secs(10),
        "it did not stop on SIGTERM",
    )
    .await;
}
