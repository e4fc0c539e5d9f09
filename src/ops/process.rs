//! The process around the server: running in the background (`serve --daemon`, for a
//! `Type=forking` systemd unit), the pid file, and taking over from a running gateway (`serve
//! --upgrade`: pingora's graceful upgrade, the listening sockets handed from the old process to
//! the new one).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

/// The pid file's name in `server.runtime_dir`.
pub const PID_FILE: &str = "sentinel-gateway.pid";

/// The write end of the pipe to the parent of `serve --daemon`, until the server is serving.
static READY_PIPE: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Forks before anything else runs (no thread may exist yet: a fork keeps only the caller's).
/// The parent waits until the child is serving, then exits 0 — or exits 1 if the child ends
/// first (its error is on the shared stderr). The child starts a session of its own, keeps
/// stdout and stderr (a journal, a log file), and returns.
pub fn daemonize() -> anyhow::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe(2) to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: pipe(2) succeeded, so both are open descriptors owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: called from `main` before any other thread exists.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("cannot fork"),
        0 => {
            drop(read_end);
            // SAFETY: setsid(2) has no memory-safety preconditions.
            unsafe { libc::setsid() };
            *READY_PIPE
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(write_end);
            Ok(())
        }
        _child => {
            drop(write_end);
            let mut byte = [0u8; 1];
            let ready =
                matches!(std::fs::File::from(read_end).read(&mut byte), Ok(1)) && byte[0] == b'R';
            std::process::exit(if ready { 0 } else { 1 });
        }
    }
}

/// Tells the parent of `serve --daemon` (if any) that the server is serving.
pub fn notify_ready() {
    let pipe = READY_PIPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(fd) = pipe {
        let _ = std::fs::File::from(fd).write_all(b"R");
    }
}

/// This process's pid in `dir/sentinel-gateway.pid`, removed on drop if it is still ours.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    pub fn write(dir: &Path) -> anyhow::Result<PidFile> {
        let path = dir.join(PID_FILE);
        let temporary = dir.join(format!("{PID_FILE}.{}", std::process::id()));
        std::fs::write(&temporary, format!("{}\n", std::process::id()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile { path })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path) == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The running gateway that keeps its pid file in `dir`.
pub fn running_gateway(dir: &Path) -> anyhow::Result<u32> {
    let path = dir.join(PID_FILE);
    let pid = read_pid(&path).with_context(|| {
        format!(
            "--upgrade: no running gateway to take over from (no pid in {})",
            path.display()
        )
    })?;
    let alive = i32::try_from(pid)
        .ok()
        // SAFETY: signal 0 only checks that the process exists.
        .is_some_and(|p| unsafe { libc::kill(p, 0) } == 0);
    if !alive {
        anyhow::bail!(
            "--upgrade: the gateway in {} (pid {pid}) is not running",
            path.display()
        );
    }
    Ok(pid)
}

/// Asks the running gateway `pid` to hand its listening sockets over and finish (SIGQUIT).
pub fn ask_to_hand_over(pid: u32) -> anyhow::Result<()> {
    let pid = i32::try_from(pid).context("pid out of range")?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, libc::SIGQUIT) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot signal the running gateway (pid {pid})"));
    }
    Ok(())
}

/// `sentinel-gateway health`: `GET /health` on the configured listener (loopback when it
/// listens on every address), for a container's `HEALTHCHECK`, where no HTTP client is
/// installed. Ok when it answers 200 within `within`.
pub fn check_health(
    config: &crate::ops::config::Config,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let addrs = config.listen_addrs().map_err(|e| anyhow::anyhow!(e))?;
    let target = reachable(*addrs.first().context("server.listen has no address")?);
    let mut stream = std::net::TcpStream::connect_timeout(&target, within)
        .with_context(|| format!("cannot connect to {target}"))?;
    stream.set_read_timeout(Some(within))?;
    stream.set_write_timeout(Some(within))?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .with_context(|| format!("no answer from {target}"))?;
    if &head[..9] != b"HTTP/1.1 " || &head[9..12] != b"200" {
        anyhow::bail!(
            "{target}/health answered {:?}",
            String::from_utf8_lossy(&head)
        );
    }
    Ok(())
}

/// Where this host reaches a listener on `addr`: loopback for a listener on every address.
pub fn reachable(mut addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}
