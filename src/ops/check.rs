//! Every check of the configuration that start-up makes without binding a port or reaching
//! the database. `check-config` and `serve` both run exactly [`check`], so each finds every
//! configuration error the other would (each a [`ConfigError`], exit 2).
//!
//! The configuration checks its own syntax and ranges as it loads ([`Config::load`]); what needs
//! a wing's knowledge is that wing's check, called from here: the store reads the database URL
//! and its TLS files, credentials the password policy and the Redis URL, the edge route
//! prefixes (as requests are read) and the trusted proxies, mail its addresses and URLs.

use std::sync::Arc;

use crate::config::{Config, ConfigError, Listeners};
use crate::credentials::rate_limit::RateLimits;
use crate::ops::handover;
use crate::store::db;

/// What start-up checks before it touches anything, and makes on the way.
pub struct Checked {
    pub listeners: Listeners,
    /// The TLS listener's certificate (none without one).
    pub certificate: Option<Arc<crate::edge::tls::Certificate>>,
}

/// The checks (see the module notes); then the listeners and their ports, the certificate,
/// the rate-limit backend and the runtime directory (when it exists already).
pub fn check(config: &Config) -> anyhow::Result<Checked> {
    db::check(&config.database)?;
    crate::credentials::check(config)?;
    crate::mail::check(&config.mail)?;
    crate::edge::check(config)?;
    let listeners = config.listeners()?;
    // A certificate that does not load is a start-up error, not a listener that fails later.
    let certificate = if listeners.tls.is_empty() {
        None
    } else {
        Some(
            crate::edge::tls::Certificate::load(&config.tls)
                .map_err(|e| ConfigError::Invalid(format!("{e:#}")))?,
        )
    };
    db::pool(&config.database).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    RateLimits::new(&config.rate_limit, config.mfa.attempts_per_5_minutes)
        .map_err(|e| ConfigError::Invalid(format!("rate_limit: {e}")))?;
    if let Some(dir) = &config.server.runtime_dir {
        if dir.exists() {
            handover::check_private(dir)?;
        }
    }
    Ok(Checked {
        listeners,
        certificate,
    })
}
