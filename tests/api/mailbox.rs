//! A real SMTP server for the tests (`tests/support/smtp_sink.py`: Python's standard-library
//! `smtpd`), started on a free port with a directory that receives each mail as it arrives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{free_port, TempDir};

pub struct SmtpServer {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

/// One mail as the server received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt_tos: Vec<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
}

impl Received {
    /// The token of the mail's link (`…#token=…`).
    pub fn token(&self) -> String {
        let at = self.text.find("#token=").expect("a link with a token");
        self.text[at + 7..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }

    /// The mail's link, whole.
    pub fn link(&self) -> String {
        let at = self.text.find("#token=").expect("a link with a token");
        let start = self.text[..at]
            .rfind(char::is_whitespace)
            .map_or(0, |i| i + 1);
        let end = at + 7 + self.token().len();
        self.text[start..end].to_string()
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py")
}

impl SmtpServer {
    pub async fn start() -> SmtpServer {
        let mut server = SmtpServer {
            port: free_port(),
            dir: TempDir::new(),
            child: None,
        };
        server.run().await;
        server
    }

    async fn run(&mut self) {
        let mut child = Command::new("python3")
            .arg(script())
            .arg(self.port.to_string())
            .arg(self.dir.0.join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start python3 tests/support/smtp_sink.py");
        let stdout = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).ok();
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("the SMTP server starts within 10 s")
            .unwrap();
        assert_eq!(line.trim(), "ready", "the SMTP server did not start");
        self.child = Some(child);
    }

    /// Stops the server (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, keeping what it received.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().await;
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The `[mail]` table of a gateway that delivers here, retrying within a second.
    pub fn config(&self) -> String {
        format!(
            "[mail]\ntransport = \"smtp\"\nsmtp_url = \"{}\"\n\
             from = \"SentinelShield <no-reply@sentinel.test>\"\n\
             app_base_url = \"https://app.sentinel.test\"\nretry_max_seconds = 1\n\n",
            self.url()
        )
    }

    /// Every mail received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let dir = self.dir.0.join("mail");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                Received {
                    rcpt_tos: v["rcpt_tos"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                    from: s("from"),
                    to: s("to"),
                    subject: s("subject"),
                    message_id: s("message_id"),
                    text: s("text"),
                }
            })
            .collect()
    }

    /// Mails received for `address`.
    pub fn received_for(&self, address: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.rcpt_tos.iter().any(|r| r.eq_ignore_ascii_case(address)))
            .collect()
    }

    /// Waits until `address` has received `count` mails (10 s at most); those mails.
    pub async fn wait_for(&self, address: &str, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.received_for(address);
            if got.len() >= count {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{address} received {} mails within 10 s, expected {count}: {got:#?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}
