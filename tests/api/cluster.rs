//! A PostgreSQL cluster a test owns (initdb + pg_ctl on a port of its own), for tests that
//! stop the database or configure it (TLS), never the shared one.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::*;

pub fn pg_bin(name: &str) -> PathBuf {
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
pub fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
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
pub fn must_as_postgres(program: &Path, args: &[&str]) {
    let out = as_postgres(program, args);
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct OwnCluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl OwnCluster {
    pub fn create() -> OwnCluster {
        OwnCluster::create_with(|_| {})
    }

    /// A cluster whose data directory `setup` may change (configuration files, certificates)
    /// before it starts; what it writes is handed to the `postgres` user.
    pub fn create_with(setup: impl FnOnce(&Path)) -> OwnCluster {
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
        setup(&data);
        if unsafe { libc::geteuid() } == 0 {
            Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&data)
                .status()
                .unwrap();
        }
        let cluster = OwnCluster {
            dir,
            port: free_port(),
        };
        cluster.start();
        cluster
    }

    pub fn start(&self) {
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

    pub fn stop(&self) {
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

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
