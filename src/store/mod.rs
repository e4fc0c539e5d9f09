//! PostgreSQL: pools, migrations, start-up checks and readiness (`db`), the `users` table
//! (`users`), the admin API's pages of users (`directory`), the roles users hold (`roles`), the
//! hashes of reset and verification tokens (`account_tokens`), sessions and their refresh
//! generations (`sessions`), the identity assertion keys (`signing_keys`), TLS to the database
//! (`pg_tls`), second factors and sessions' assurance levels (`mfa`), passkeys and their ceremonies
//! (`passkeys`) and the in-memory user state kept fresh by LISTEN/NOTIFY, whose changes it
//! announces (`user_cache`), and the audit log of security events (`audit`). Storage errors
//! are [`StoreError`]s.

pub mod account_tokens;
pub mod audit;
pub mod db;
pub mod directory;
pub mod mfa;
pub mod passkeys;
pub mod pg_tls;
pub mod roles;
pub mod sessions;
pub mod signing_keys;
pub mod user_cache;
pub mod users;

/// What a storage call can fail with. The store knows nothing of HTTP: `own::api` turns these
/// into answers, in the one place that maps errors (503 with `Retry-After` for `Unavailable`,
/// 500 for `Internal`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database (or this connection to it) is unreachable, too slow or shutting down: not
    /// now, maybe later.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A statement the database could not run, or a row that does not read.
    #[error("internal: {0}")]
    Internal(String),
}

/// `t` in whole seconds since the Unix epoch, as JWT times and the stored user state count.
pub fn unix_seconds(t: std::time::SystemTime) -> i64 {
    match t.duration_since(std::time::SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // Before 1970 (a clock gone very wrong): every token has expired.
        Err(_) => i64::MIN,
    }
}
