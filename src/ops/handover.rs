//! The runtime directory and `serve --upgrade`'s socket hand-over, kept to the gateway's own
//! user.
//!
//! Pingora hands the listening sockets over through a unix socket: the new process listens on
//! it, the old one connects and sends its descriptors. Pingora's listener is made `0666` and
//! takes whoever connects first, so a local user who reaches it before the old gateway could
//! make the new one serve on a socket of theirs — and then bind the public port once the old
//! gateway has gone. Four things close that here:
//! - the runtime directory is created `0700`, and one that is not ours, is a symlink, or is
//!   writable by group or others is refused ([`RuntimeDir::open`]);
//! - the gateway being replaced is the process holding the pid file's lock
//!   ([`running_gateway`]), never whatever pid the file names, so a rewritten or stale pid
//!   file cannot make `serve --upgrade` signal another process;
//! - the new process listens on the hand-over socket itself ([`Handover`]) and takes
//!   descriptors only from that process, as `SO_PEERCRED` reports it (same user, same pid);
//!   anyone else is refused and logged;
//! - what it accepts it passes on to pingora's own listener, which is in a directory of its
//!   own (`0700`), so nobody else can reach that one at all.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

use crate::config::ConfigError;

/// The pid file's name in `server.runtime_dir`.
pub const PID_FILE: &str = "sentinel-gateway.pid";

/// Where an old gateway sends its listening sockets (pingora's `upgrade_sock`).
pub const HANDOVER_SOCKET: &str = "upgrade.sock";

/// The most descriptors one hand-over carries (pingora's own limit).
const MAX_FDS: usize = 32;

/// The user this process runs as.
fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Where pingora keeps its pid file and upgrade socket: per process by default, so that
/// several instances run side by side, and removed on exit when we made it.
pub struct RuntimeDir {
    pub path: PathBuf,
    /// Made by this process (no `server.runtime_dir`): removed on exit.
    pub owned: bool,
}

impl RuntimeDir {
    /// The configured directory (created `0700` if missing, and checked either way), or a new
    /// private one under the temporary directory.
    pub fn open(configured: Option<PathBuf>) -> anyhow::Result<RuntimeDir> {
        let Some(path) = configured else {
            return RuntimeDir::private_temporary();
        };
        match std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&path)
        {
            Ok(()) => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot create the runtime directory {} (server.runtime_dir)",
                        path.display()
                    )
                })
            }
        }
        check_private(&path)?;
        Ok(RuntimeDir { path, owned: false })
    }

    /// A fresh directory of our own in the temporary directory: created, never found (a name
    /// someone made in `/tmp` beforehand is not used).
    fn private_temporary() -> anyhow::Result<RuntimeDir> {
        let mut last = None;
        for _ in 0..8 {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).context("no randomness for the runtime directory")?;
            let path = std::env::temp_dir().join(format!(
                "sentinel-gateway-{}-{:016x}",
                std::process::id(),
                u64::from_le_bytes(random)
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(RuntimeDir { path, owned: true }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot create a runtime directory {}", path.display())
                    })
                }
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no free name"), anyhow::Error::from))
            .context("cannot create a runtime directory in the temporary directory")
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Refuses a runtime directory another user could write into or swap: it must be a directory
/// (not a symlink to one), owned by this process's user, and not writable by group or others.
pub fn check_private(path: &Path) -> Result<(), ConfigError> {
    let refuse = |why: String| {
        ConfigError::Invalid(format!(
            "server.runtime_dir {} {why}: another user could take over the upgrade hand-over",
            path.display()
        ))
    };
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| refuse(format!("cannot be read ({e})")))?;
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "is a symbolic link; name the directory itself".into(),
        ));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    if meta.uid() != euid() {
        return Err(refuse(format!(
            "is owned by uid {}, not by this user (uid {})",
            meta.uid(),
            euid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "is writable by group or others (mode {mode:03o}; chmod 700 it)"
        )));
    }
    Ok(())
}

/// This process's pid in `dir/sentinel-gateway.pid`, write-locked (`fcntl`) for as long as the
/// process runs: the lock, not the file's text, is what names the running gateway. Removed
/// on drop if it is still ours.
pub struct PidFile {
    path: PathBuf,
    /// Holds the lock (closing any descriptor of the file in this process would drop it).
    _file: File,
}

impl PidFile {
    pub fn write(dir: &Path) -> anyhow::Result<PidFile> {
        let path = dir.join(PID_FILE);
        let temporary = dir.join(format!("{PID_FILE}.{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&temporary)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
            lock(&file)?;
            std::fs::rename(&temporary, &path)?;
            Ok::<File, std::io::Error>(file)
        })();
        let file = written.with_context(|| format!("cannot write the pid file {}", path.display()));
        if file.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        Ok(PidFile { path, _file: file? })
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

/// A write lock on the whole of `file`, held by this process until it exits.
fn lock(file: &File) -> std::io::Result<()> {
    let mut request = whole_file_lock();
    // SAFETY: `request` is a valid flock struct; the descriptor is open.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn whole_file_lock() -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value, filled in below.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    request
}

/// The process holding a lock on `file`, if any.
fn lock_holder(file: &File) -> std::io::Result<Option<u32>> {
    let mut request = whole_file_lock();
    // SAFETY: `request` is a valid flock struct; the descriptor is open.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut request) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if request.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(u32::try_from(request.l_pid).ok())
}

/// The running gateway whose pid file is in `dir`: the process that holds the file's lock.
///
/// A gateway from before the lock (an upgrade from an older release) holds none; its pid is
/// then taken from the file only if that process runs as this user and is a
/// `sentinel-gateway` (by its command name), so a stale file whose pid now belongs to another
/// process is refused rather than signalled.
pub fn running_gateway(dir: &Path) -> anyhow::Result<u32> {
    check_private(dir)?;
    let path = dir.join(PID_FILE);
    let none = || {
        format!(
            "--upgrade: no running gateway to take over from (no pid in {})",
            path.display()
        )
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => anyhow::bail!(none()),
        Err(e) => {
            return Err(e).with_context(|| format!("--upgrade: cannot open {}", path.display()))
        }
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != euid() || meta.permissions().mode() & 0o022 != 0 {
        anyhow::bail!(
            "--upgrade: {} is not a pid file of this user's (owner uid {}, mode {:03o}); \
             refusing to signal the process it names",
            path.display(),
            meta.uid(),
            meta.permissions().mode() & 0o777
        );
    }
    let written = std::io::read_to_string(&file)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match lock_holder(&file)? {
        Some(holder) if written == Some(holder) => Ok(holder),
        Some(holder) => anyhow::bail!(
            "--upgrade: {} names pid {} but the gateway holding it is pid {holder}; \
             refusing to signal either",
            path.display(),
            written.map_or_else(|| "nothing".to_string(), |p| p.to_string())
        ),
        None => {
            let pid = written.with_context(none)?;
            if is_gateway_of_ours(pid) {
                Ok(pid)
            } else {
                anyhow::bail!(
                    "--upgrade: the gateway in {} (pid {pid}) is not running",
                    path.display()
                )
            }
        }
    }
}

/// Whether `pid` is a running `sentinel-gateway` of this user (from `/proc`).
fn is_gateway_of_ours(pid: u32) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(meta) = std::fs::metadata(&proc) else {
        return false;
    };
    // The kernel keeps the first 15 bytes of the executable's name.
    let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
    let comm = comm.trim_end();
    meta.uid() == euid() && !comm.is_empty() && "sentinel-gateway".starts_with(comm)
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

/// The new process's side of the hand-over: a listener on `upgrade.sock` that takes the
/// sockets only from the gateway being replaced and passes them on to pingora, which listens
/// in a directory of its own.
pub struct Handover {
    listener: UnixListener,
    /// `runtime_dir/upgrade.sock`: where the old gateway sends.
    public: PathBuf,
    /// A `0700` directory for pingora's listener, removed afterwards.
    private: PathBuf,
    predecessor: u32,
}

impl Handover {
    /// Listens on `dir/upgrade.sock` for the sockets of `predecessor`. Call before signalling
    /// it; connections that arrive before [`Handover::relay`] runs wait in the backlog.
    pub fn prepare(dir: &Path, predecessor: u32) -> anyhow::Result<Handover> {
        let public = dir.join(HANDOVER_SOCKET);
        remove_socket(&public)?;
        let listener = UnixListener::bind(&public)
            .with_context(|| format!("cannot listen on {}", public.display()))?;
        // Only this user may connect (the directory may let others look in); whoever does is
        // still checked by `SO_PEERCRED`.
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o600))?;
        let private = dir.join(format!(".handover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .with_context(|| format!("cannot create {}", private.display()))?;
        Ok(Handover {
            listener,
            public,
            private,
            predecessor,
        })
    }

    /// Where pingora's own listener goes (its `upgrade_sock` while it starts).
    pub fn pingora_socket(&self) -> PathBuf {
        self.private.join(HANDOVER_SOCKET)
    }

    /// Waits (on a thread of its own) up to `within` for the predecessor's sockets, refusing
    /// anyone else, and passes them on to pingora's listener. The thread gives the hand-over
    /// back, to be dropped (its socket and directory removed) once pingora has its sockets:
    /// pingora removes its own listener itself, and fails if it is gone.
    pub fn relay(
        self,
        within: Duration,
    ) -> std::thread::JoinHandle<(Handover, anyhow::Result<()>)> {
        std::thread::spawn(move || {
            let deadline = Instant::now() + within;
            let relayed = self.receive(deadline).and_then(|(payload, fds)| {
                // Pingora holds its own copies once sent; ours close as `fds` drops.
                send(&self.pingora_socket(), &payload, &fds, deadline)
            });
            (self, relayed)
        })
    }

    fn receive(&self, deadline: Instant) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
        self.listener.set_nonblocking(true)?;
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        anyhow::bail!(
                            "the running gateway (pid {}) did not hand its sockets over",
                            self.predecessor
                        );
                    }
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                Err(e) => return Err(e).context("cannot accept on the hand-over socket"),
            };
            let peer = socket::getsockopt(&stream, socket::sockopt::PeerCredentials)
                .context("cannot read the hand-over peer's credentials")?;
            let (pid, uid) = (u32::try_from(peer.pid()).ok(), peer.uid());
            if pid != Some(self.predecessor) || uid != euid() {
                tracing::warn!(
                    peer_pid = peer.pid(),
                    peer_uid = uid,
                    expected_pid = self.predecessor,
                    "refused a socket hand-over from a process that is not the gateway being \
                     replaced"
                );
                continue;
            }
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now())))?;
            return receive_fds(&stream);
        }
    }
}

impl Drop for Handover {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.public);
        let _ = std::fs::remove_dir_all(&self.private);
    }
}

/// Removes a leftover hand-over socket at `path`; anything else there is an error.
fn remove_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the old {}", path.display())),
        Ok(_) => anyhow::bail!("{} exists and is not a socket", path.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot look at {}", path.display())),
    }
}

/// One message with descriptors, as pingora sends it (its bind addresses as the payload).
fn receive_fds(stream: &UnixStream) -> anyhow::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(&mut payload)];
    let msg = socket::recvmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .context("cannot receive the listening sockets")?;
    let mut fds = Vec::new();
    for message in msg.cmsgs().context("cannot read the hand-over message")? {
        if let ControlMessageOwned::ScmRights(received) = message {
            // SAFETY: SCM_RIGHTS descriptors are new in this process and owned by nothing else.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    let bytes = msg.bytes;
    if fds.is_empty() {
        anyhow::bail!("the hand-over carried no sockets");
    }
    payload.truncate(bytes);
    Ok((payload, fds))
}

/// Sends `payload` and `fds` to pingora's listener at `path`, which appears once pingora's
/// bootstrap runs.
fn send(path: &Path, payload: &[u8], fds: &[OwnedFd], deadline: Instant) -> anyhow::Result<()> {
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("cannot pass the sockets on to pingora"),
        }
    };
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    socket::sendmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(payload)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .context("cannot pass the sockets on to pingora")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let p = std::env::temp_dir().join(format!("sg-handover-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    #[test]
    fn a_runtime_directory_is_made_private_and_an_open_one_refused() {
        let base = temp();
        let made = base.join("a/b");
        let dir = RuntimeDir::open(Some(made.clone())).unwrap();
        assert_eq!(
            std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(dir);
        assert!(made.exists(), "a configured directory is kept");

        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = RuntimeDir::open(Some(made.clone()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("writable by group or others (mode 777"), "{e}");
        // Readable by others is fine: the hand-over checks who connects.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o755)).unwrap();
        RuntimeDir::open(Some(made.clone())).unwrap();

        let link = base.join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let e = RuntimeDir::open(Some(link)).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");

        let temporary = RuntimeDir::open(None).unwrap();
        let mode = std::fs::metadata(&temporary.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let path = temporary.path.clone();
        drop(temporary);
        assert!(!path.exists(), "a directory of our own making is removed");
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn the_gateway_is_the_holder_of_the_pid_files_lock() {
        let dir = temp();
        let e = running_gateway(&dir).err().unwrap().to_string();
        assert!(e.contains("no running gateway"), "{e}");
        // A lock is per process: this process holding it is what another one would see, so
        // the check is made from a child that inherits nothing but the path.
        let pid_file = PidFile::write(&dir).unwrap();
        assert_eq!(read_pid(&dir.join(PID_FILE)), Some(std::process::id()));
        let file = File::open(dir.join(PID_FILE)).unwrap();
        // Our own lock is invisible to F_GETLK from this process (it would not conflict).
        assert_eq!(lock_holder(&file).unwrap(), None);
        drop(file);
        drop(pid_file);
        assert!(!dir.join(PID_FILE).exists());

        // A stale file naming a process that is not a gateway is refused, not signalled.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(dir.join(PID_FILE), format!("{}\n", other.id())).unwrap();
        let e = running_gateway(&dir).err().unwrap().to_string();
        assert!(e.contains("is not running"), "{e}");
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        other.wait().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
