//! Headless Chromium driven over the DevTools protocol (`--remote-debugging-pipe`: requests on
//! descriptor 3, answers on 4, each a JSON message ended by a NUL byte), for what a page alone
//! cannot do: a virtual WebAuthn authenticator (`WebAuthn.addVirtualAuthenticator`), so that the
//! browser's own `navigator.credentials` makes and signs real passkeys.
//!
//! Calls block: the gateway is another process, so the test's runtime has nothing to run
//! meanwhile. Every read gives up after 30 s.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

const READ_TIMEOUT_MS: i32 = 30_000;

pub struct Browser {
    child: Child,
    to: File,
    from: File,
    buffered: Vec<u8>,
    next_id: u64,
    session: String,
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2");
    // SAFETY: both descriptors were just made and are owned by nothing else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Chromium on a blank page with a profile in `profile`, attached to that page.
    pub fn launch(profile: &Path) -> Browser {
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("chromium is installed (scripts/test.sh installs Debian's chromium)");
        let (cmd_read, cmd_write) = pipe();
        let (reply_read, reply_write) = pipe();
        let (r, w) = (cmd_read.as_raw_fd(), reply_write.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec. The pipe's
        // ends are first copied above 10, so that placing them at 3 and 4 cannot clobber one
        // with the other.
        unsafe {
            command.pre_exec(move || {
                let r = libc::fcntl(r, libc::F_DUPFD, 10);
                let w = libc::fcntl(w, libc::F_DUPFD, 10);
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("run chromium");
        drop(cmd_read);
        drop(reply_write);
        let mut browser = Browser {
            child,
            to: cmd_write,
            from: reply_read,
            buffered: Vec::new(),
            next_id: 1,
            session: String::new(),
        };
        let targets = browser.call(None, "Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .map(|t| t["targetId"].clone())
            .unwrap_or_else(|| {
                browser.call(None, "Target.createTarget", json!({"url": "about:blank"}))["targetId"]
                    .clone()
            });
        let attached = browser.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser.page("Page.enable", json!({}));
        browser.page("Runtime.enable", json!({}));
        browser
    }

    /// One message, up to its NUL.
    fn read_message(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == 0) {
                let message: Vec<u8> = self.buffered.drain(..=end).collect();
                return serde_json::from_slice(&message[..end]).expect("a DevTools message");
            }
            let mut poll = libc::pollfd {
                fd: self.from.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, READ_TIMEOUT_MS) };
            assert!(ready > 0, "chromium did not answer within 30 s");
            let mut chunk = [0u8; 65536];
            let n = self.from.read(&mut chunk).expect("read from chromium");
            assert!(n > 0, "chromium closed its DevTools pipe");
            self.buffered.extend_from_slice(&chunk[..n]);
        }
    }

    /// A DevTools command (to the browser, or to a session); its result.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("write to chromium");
        loop {
            let reply = self.read_message();
            if reply["id"] == id {
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        }
    }

    /// A command to the page.
    pub fn page(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Goes to `url` and waits until it has loaded.
    pub fn goto(&mut self, url: &str) {
        self.page("Page.navigate", json!({"url": url}));
        for _ in 0..100 {
            let state = self.eval_value("document.readyState");
            let here = self.eval_value("location.href");
            if state == "complete" && here.as_str().is_some_and(|h| h.starts_with(url)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{url} did not load");
    }

    /// A virtual platform authenticator with resident keys and user verification (a passkey
    /// provider whose user always passes the fingerprint check); its id.
    pub fn add_authenticator(&mut self) -> String {
        self.page("WebAuthn.enable", json!({"enableUI": false}));
        let added = self.page(
            "WebAuthn.addVirtualAuthenticator",
            json!({"options": {
                "protocol": "ctap2",
                "ctap2Version": "ctap2_1",
                "transport": "internal",
                "hasResidentKey": true,
                "hasUserVerification": true,
                "isUserVerified": true,
                "automaticPresenceSimulation": true,
            }}),
        );
        added["authenticatorId"].as_str().unwrap().to_string()
    }

    /// The credentials an authenticator holds.
    pub fn credentials(&mut self, authenticator: &str) -> Vec<Value> {
        self.page(
            "WebAuthn.getCredentials",
            json!({"authenticatorId": authenticator}),
        )["credentials"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    fn eval_value(&mut self, expression: &str) -> Value {
        let out = self.page(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        out["result"]["value"].clone()
    }

    /// The value of an async function body run in the page (`return …`); `Err` with the
    /// exception's text when it throws.
    pub fn run(&mut self, body: &str) -> Result<Value, String> {
        let out = self.page(
            "Runtime.evaluate",
            json!({
                "expression": format!("(async () => {{ {body} }})()"),
                "awaitPromise": true,
                "returnByValue": true,
                "userGesture": true,
            }),
        );
        match out.get("exceptionDetails") {
            Some(e) => Err(e["exception"]["description"]
                .as_str()
                .unwrap_or("exception")
                .to_string()),
            None => Ok(out["result"]["value"].clone()),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
