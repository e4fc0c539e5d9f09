//! Delivers the outbox: each running gateway has one worker, which takes due mails a few at a
//! time ([`outbox::claim`]), sends them one by one (SMTP, or the log), and records the outcome:
//! sent, tried again later (the wait doubles from 1 s up to `mail.retry_max_seconds`), or
//! abandoned (the server refused it for good, its link expired, or three days went by). The
//! worker wakes when this gateway writes a mail, and every [`POLL`] for mail written by others.
//!
//! A mail is sent at least once. It could go twice only if a gateway stopped between the SMTP
//! server's acceptance and the `UPDATE` that records it; its `Message-ID` stays the same across
//! attempts, so a receiving system can tell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{MailConfig, MailTransport};
use crate::credentials::one_time::SealKey;
use crate::mail::{outbox, TOKEN_MARK};
use crate::metrics::metrics;
use crate::store::db::Readiness;
use crate::store::{account_tokens, users, StoreError};

/// How often the outbox is looked at when nothing woke the worker.
pub const POLL: Duration = Duration::from_secs(2);
/// Mails taken per claim.
const BATCH: i64 = 10;
/// How long one SMTP delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a claimed mail is left to its worker (longer than a delivery can take).
const LEASE: Duration = Duration::from_secs(90);
/// How often old outbox rows and ended tokens are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The SMTP transport of `mail.smtp_url`, not yet connected.
pub fn smtp_builder(
    url: &str,
) -> Result<lettre::transport::smtp::AsyncSmtpTransportBuilder, lettre::transport::smtp::Error> {
    Ok(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.timeout(Some(SEND_TIMEOUT)))
}

enum Delivery {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Log,
}

/// What one attempt came to.
enum Outcome {
    Sent,
    Retry(String),
    GiveUp(String),
}

pub struct MailWorker {
    pool: deadpool_postgres::Pool,
    /// Opens the sealed secrets of the links in mails.
    seal_key: SealKey,
    ready: Arc<Readiness>,
    /// Woken when this gateway has written mail.
    wake: Arc<tokio::sync::Notify>,
    config: MailConfig,
}

impl MailWorker {
    pub fn new(
        pool: deadpool_postgres::Pool,
        seal_key: SealKey,
        ready: Arc<Readiness>,
        wake: Arc<tokio::sync::Notify>,
        config: MailConfig,
    ) -> MailWorker {
        MailWorker {
            pool,
            seal_key,
            ready,
            wake,
            config,
        }
    }

    fn delivery(&self) -> Result<Delivery, String> {
        match self.config.transport {
            MailTransport::Log => Ok(Delivery::Log),
            MailTransport::Smtp => smtp_builder(self.config.smtp_url.expose())
                .map(|b| Delivery::Smtp(b.build()))
                .map_err(|e| e.to_string()),
        }
    }

    fn backoff(&self, attempt: i32) -> Duration {
        let exponent = attempt.clamp(1, 20) - 1;
        Duration::from_secs((1u64 << exponent).min(self.config.retry_max_seconds))
    }

    /// Delivers what is due; how many mails it took.
    async fn run_once(&self, delivery: &Delivery, from: &Mailbox) -> Result<usize, StoreError> {
        let claimed = {
            let db = users::client(&self.pool).await?;
            outbox::claim(&db, BATCH, LEASE).await?
        };
        let taken = claimed.len();
        for mail in claimed {
            let outcome = if mail.stale {
                Outcome::GiveUp("expired before it could be delivered".into())
            } else {
                self.send(delivery, from, &mail).await
            };
            let db = users::client(&self.pool).await?;
            match outcome {
                Outcome::Sent => {
                    outbox::delivered(&db, mail.id).await?;
                    metrics().mail_sent.inc();
                }
                Outcome::Retry(error) => {
                    let delay = self.backoff(mail.attempt);
                    tracing::warn!(outbox_id = mail.id, kind = %mail.kind, attempt = mail.attempt,
                        retry_in_secs = delay.as_secs(), %error, "mail not delivered, will retry");
                    outbox::retry_later(&db, mail.id, delay, &error).await?;
                    metrics().mail_failed_attempts.inc();
                }
                Outcome::GiveUp(reason) => {
                    tracing::warn!(outbox_id = mail.id, kind = %mail.kind, attempt = mail.attempt,
                        %reason, "mail abandoned");
                    outbox::abandon(&db, mail.id, &reason).await?;
                    metrics().mail_abandoned.inc();
                }
            }
        }
        Ok(taken)
    }

    async fn send(&self, delivery: &Delivery, from: &Mailbox, mail: &outbox::Claimed) -> Outcome {
        let mut text = mail.body.clone();
        if let Some(sealed) = &mail.sealed_token {
            match self.seal_key.open(sealed) {
                Some(token) => text = text.replace(TOKEN_MARK, &token.encode()),
                None => return Outcome::GiveUp("its sealed token does not open".into()),
            }
        }
        let Ok(to) = mail.recipient.parse::<Mailbox>() else {
            return Outcome::GiveUp("the recipient is not a mail address".into());
        };
        match delivery {
            Delivery::Log => {
                // The log transport is for development: the link is the point of it.
                let link = text
                    .split_whitespace()
                    .find(|word| word.contains("#token="))
                    .unwrap_or("");
                tracing::info!(outbox_id = mail.id, kind = %mail.kind, to = %mail.recipient,
                    subject = %mail.subject, link, body = %text.escape_debug(), "mail (log transport)");
                Outcome::Sent
            }
            Delivery::Smtp(transport) => {
                let domain = from.email.domain().to_string();
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject.clone())
                    .message_id(Some(format!(
                        "<outbox-{}-{}@{domain}>",
                        mail.id, mail.created
                    )))
                    .header(ContentType::TEXT_PLAIN)
                    .body(text);
                let message = match message {
                    Ok(m) => m,
                    Err(e) => return Outcome::GiveUp(format!("cannot be written: {e}")),
                };
                match tokio::time::timeout(SEND_TIMEOUT, transport.send(message)).await {
                    Ok(Ok(_)) => Outcome::Sent,
                    Ok(Err(e)) if e.is_permanent() => Outcome::GiveUp(short(&e.to_string())),
                    Ok(Err(e)) => Outcome::Retry(short(&e.to_string())),
                    Err(_) => Outcome::Retry("timed out".into()),
                }
            }
        }
    }

    async fn prune(&self) -> Result<(), StoreError> {
        let db = users::client(&self.pool).await?;
        let mails = outbox::prune(&db).await?;
        let tokens = account_tokens::prune(&db).await?;
        tracing::debug!(mails, tokens, "pruned the outbox and ended account tokens");
        Ok(())
    }
}

/// At most 300 characters of an error, for the log and `last_error`.
fn short(text: &str) -> String {
    text.chars().take(300).collect()
}

#[async_trait::async_trait]
impl BackgroundService for MailWorker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let delivery = match self.delivery() {
            Ok(d) => d,
            Err(e) => {
                // Validated at start-up; kept as a log line rather than a panic.
                tracing::error!(error = %e, "mail.smtp_url cannot be used: no mail is delivered");
                return;
            }
        };
        let Ok(from) = self.config.from.parse::<Mailbox>() else {
            tracing::error!("mail.from is not an address: no mail is delivered");
            return;
        };
        let mut last_prune: Option<Instant> = None;
        let mut failing = false;
        loop {
            if self.ready.is_ready() {
                match self.run_once(&delivery, &from).await {
                    Ok(taken) => {
                        if failing {
                            tracing::info!("mail worker reaches the database again");
                            failing = false;
                        }
                        if taken as i64 == BATCH {
                            continue;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "mail worker cannot read the outbox");
                            failing = true;
                        }
                    }
                }
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
                    && self.prune().await.is_ok()
                {
                    last_prune = Some(Instant::now());
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
