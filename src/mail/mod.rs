//! Mail: what the gateway writes to users (verification and reset links, notices that the
//! password changed), the outbox it waits in, and the worker that delivers it.
//!
//! A change and its mail are one transaction: the handler writes the mail to the outbox
//! ([`outbox::enqueue`]) before it commits, and answers without waiting for delivery. The worker
//! ([`worker::MailWorker`], one per running gateway) then sends it over SMTP with retries, or
//! writes it to the log in development. An SMTP outage or a restart delays mail; it does not
//! lose it or hold up a request.

pub mod outbox;
pub mod worker;

use std::time::Duration;

use crate::config::{MailConfig, MailTransport};
use crate::credentials::one_time::OneTimeToken;

/// Where the unsealed token goes in a mail's text.
pub const TOKEN_MARK: &str = "{token}";

/// How long links last.
pub const RESET_LINK_LIFETIME: Duration = Duration::from_secs(30 * 60);
pub const VERIFY_LINK_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// An invitation's link (a password-reset token: it sets the first password).
pub const INVITATION_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// One mail to write to the outbox.
#[derive(Debug)]
pub struct Mail {
    pub kind: &'static str,
    pub to: String,
    pub subject: &'static str,
    /// The text, with [`TOKEN_MARK`] where `token` goes.
    pub body: String,
    /// The link's secret and how long the link lasts (the mail is not sent after that).
    pub token: Option<(OneTimeToken, Duration)>,
}

/// The texts. Links are built from `mail.app_base_url` alone, never from a request.
pub struct Letters {
    app_base_url: String,
}

impl Letters {
    pub fn new(config: &MailConfig) -> Letters {
        Letters {
            app_base_url: config.app_base_url.trim_end_matches('/').to_string(),
        }
    }

    pub fn verify_email(&self, to: &str, token: OneTimeToken) -> Mail {
        Mail {
            kind: "verify_email",
            to: to.to_string(),
            subject: "Confirm your email address",
            body: format!(
                "Hello,\n\n\
                 please confirm that {to} is your address by opening this link within 24 hours:\n\n\
                 {}/verify-email#token={TOKEN_MARK}\n\n\
                 If you did not create an account, you can ignore this mail.\n",
                self.app_base_url
            ),
            token: Some((token, VERIFY_LINK_LIFETIME)),
        }
    }

    pub fn password_reset(&self, to: &str, token: OneTimeToken) -> Mail {
        Mail {
            kind: "password_reset",
            to: to.to_string(),
            subject: "Reset your password",
            body: format!(
                "Hello,\n\n\
                 someone asked to reset the password of the account {to}. To choose a new \
                 password, open this link within 30 minutes:\n\n\
                 {}/reset-password#token={TOKEN_MARK}\n\n\
                 The link works once. If it was not you, ignore this mail: your password stays \
                 as it is.\n",
                self.app_base_url
            ),
            token: Some((token, RESET_LINK_LIFETIME)),
        }
    }

    /// To a user an administrator created without a password: the reset flow's link, which
    /// sets the first one (and proves the address).
    pub fn invitation(&self, to: &str, token: OneTimeToken) -> Mail {
        Mail {
            kind: "invitation",
            to: to.to_string(),
            subject: "You have been invited",
            body: format!(
                "Hello,\n\n\
                 an account was created for {to}. To choose its password and sign in, open this \
                 link within 7 days:\n\n\
                 {}/reset-password#token={TOKEN_MARK}\n\n\
                 The link works once. If you did not expect this, you can ignore this mail.\n",
                self.app_base_url
            ),
            token: Some((token, INVITATION_LINK_LIFETIME)),
        }
    }

    /// After a second factor was added or removed, or a recovery code used: `what` says which
    /// ("A second factor was added to", …).
    pub fn mfa_notice(&self, to: &str, what: &'static str) -> Mail {
        Mail {
            kind: "mfa_notice",
            to: to.to_string(),
            subject: "Your sign-in settings changed",
            body: format!(
                "Hello,\n\n\
                 {what} the account {to}.\n\n\
                 If this was not you, reset your password at once from {}/reset-password and \
                 check the account's second factors.\n",
                self.app_base_url
            ),
            token: None,
        }
    }

    /// After a password change (`reset` false) or a reset.
    pub fn password_changed(&self, to: &str, reset: bool) -> Mail {
        let how = if reset { "reset" } else { "changed" };
        Mail {
            kind: if reset {
                "password_was_reset"
            } else {
                "password_changed"
            },
            to: to.to_string(),
            subject: if reset {
                "Your password was reset"
            } else {
                "Your password was changed"
            },
            body: format!(
                "Hello,\n\n\
                 the password of the account {to} was just {how}, and every other sign-in of \
                 the account was ended.\n\n\
                 If this was not you, reset your password at once from {}/reset-password and \
                 check the account.\n",
                self.app_base_url
            ),
            token: None,
        }
    }
}

/// The `[mail]` checks of configuration validation: `Err` names the key.
/// Mail's check of `[mail]` (see [`check_config`]), as a configuration error.
pub fn check(config: &MailConfig) -> Result<(), crate::config::ConfigError> {
    check_config(config).map_err(|e| crate::config::ConfigError::Invalid(format!("mail.{e}")))
}

pub fn check_config(config: &MailConfig) -> Result<(), String> {
    if config.from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(format!(
            "from must be an address, optionally with a name (\"Name <a@example.com>\"), got {:?}",
            config.from
        ));
    }
    let base = &config.app_base_url;
    if !(base.starts_with("http://") || base.starts_with("https://"))
        || base.contains(['#', '?', '{', '}', ' '])
    {
        return Err(format!(
            "app_base_url must be an http(s) URL without query or fragment, got {base:?}"
        ));
    }
    if config.transport == MailTransport::Smtp {
        worker::smtp_builder(config.smtp_url.expose()).map_err(|e| format!("smtp_url: {e}"))?;
    }
    if config.retry_max_seconds == 0 || config.retry_max_seconds > 86_400 {
        return Err("retry_max_seconds must be between 1 and 86400".into());
    }
    Ok(())
}

#[cfg(test)]
mod check_tests {
    use super::*;

    #[test]
    fn addresses_and_urls_are_checked_with_their_keys_named() {
        let good = MailConfig {
            transport: MailTransport::Smtp,
            smtp_url: crate::config::Secret::new("smtps://user:p%40ss@mail.example:465"),
            from: "Ops <ops@example.com>".into(),
            app_base_url: "https://app.example".into(),
            ..MailConfig::default()
        };
        check(&good).unwrap();
        type Spoil = fn(&mut MailConfig);
        let cases: [(Spoil, &str); 4] = [
            (
                |c| c.app_base_url = "https://app.example/#x".into(),
                "mail.app_base_url",
            ),
            (
                |c| c.app_base_url = "app.example".into(),
                "mail.app_base_url",
            ),
            (|c| c.from = "not an address".into(), "mail.from"),
            (
                |c| c.smtp_url = crate::config::Secret::new("imap://mail.example"),
                "mail.smtp_url",
            ),
        ];
        for (spoil, says) in cases {
            let mut config = good.clone();
            spoil(&mut config);
            let e = check(&config).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
