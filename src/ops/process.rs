//! The process around the server: running in the background (`serve --daemon`, for a
//! `Type=forking` systemd unit), the pid file, and taking over from a running gateway (`serve
//! --upgrade`: pingora's graceful upgrade, the listening sockets handed from the old process to
//! the new one).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Mutex;

use anyhow::Context;

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

/// `sentinel-gateway health`: `GET /health` on the configured listener (loopback when it
/// listens on every address), for a container's `HEALTHCHECK`, where no HTTP client is
/// installed. Ok when it answers 200 within `within`.
pub fn check_health(
    config: &crate::config::Config,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let addrs = config.listen_addrs()?;
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
