//! The audit log (`sentinel_audit_events`, `migrations/V10__audit_events.sql`): security
//! events, each written with the change it records, in the same transaction. Read newest first
//! by the admin API and `sentinel-gateway events`; pruned past `audit.retention_days`.
//!
//! What goes in is chosen by the writers: a kind from [`Kind`], who and where, and a small
//! JSON detail. Never a password, a token or a link.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use uuid::Uuid;

use crate::store::users::{db_error, storable};
use crate::store::StoreError;

/// Every kind of event, as stored and filtered on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    UserRegistered,
    UserCreated,
    LoginSucceeded,
    /// With `{"reason": "unknown_account" | "wrong_password" | "inactive"}`.
    LoginFailed,
    /// With `{"scope": "local" | "others" | "global"}`.
    Logout,
    SessionRevoked,
    RefreshReuseDetected,
    PasswordChanged,
    PasswordResetRequested,
    PasswordReset,
    EmailVerified,
    UserDeactivated,
    UserActivated,
    /// With `{"roles": [...]}`.
    RoleGranted,
    /// With `{"roles": [...]}`.
    RoleRevoked,
    /// A second factor activated (`{"factor_id", "type"}`).
    MfaEnrolled,
    /// A session raised to `aal2` (`{"method": "totp" | "recovery_code"}`).
    MfaVerified,
    /// A wrong code (`{"method"}`).
    MfaFailed,
    MfaRecoveryCodeUsed,
    /// A factor removed (`{"factor_id"}`; by an administrator: every factor).
    MfaRemoved,
}

impl Kind {
    pub const ALL: [Kind; 20] = [
        Kind::UserRegistered,
        Kind::UserCreated,
        Kind::LoginSucceeded,
        Kind::LoginFailed,
        Kind::Logout,
        Kind::SessionRevoked,
        Kind::RefreshReuseDetected,
        Kind::PasswordChanged,
        Kind::PasswordResetRequested,
        Kind::PasswordReset,
        Kind::EmailVerified,
        Kind::UserDeactivated,
        Kind::UserActivated,
        Kind::RoleGranted,
        Kind::RoleRevoked,
        Kind::MfaEnrolled,
        Kind::MfaVerified,
        Kind::MfaFailed,
        Kind::MfaRecoveryCodeUsed,
        Kind::MfaRemoved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UserRegistered => "user.registered",
            Kind::UserCreated => "user.created",
            Kind::LoginSucceeded => "login.succeeded",
            Kind::LoginFailed => "login.failed",
            Kind::Logout => "logout",
            Kind::SessionRevoked => "session.revoked",
            Kind::RefreshReuseDetected => "refresh.reuse_detected",
            Kind::PasswordChanged => "password.changed",
            Kind::PasswordResetRequested => "password.reset_requested",
            Kind::PasswordReset => "password.reset",
            Kind::EmailVerified => "email.verified",
            Kind::UserDeactivated => "user.deactivated",
            Kind::UserActivated => "user.activated",
            Kind::RoleGranted => "role.granted",
            Kind::RoleRevoked => "role.revoked",
            Kind::MfaEnrolled => "mfa.enrolled",
            Kind::MfaVerified => "mfa.verified",
            Kind::MfaFailed => "mfa.failed",
            Kind::MfaRecoveryCodeUsed => "mfa.recovery_code_used",
            Kind::MfaRemoved => "mfa.removed",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// Where a request came from, as events record it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// One event to write.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub kind: Kind,
    /// Whom it is about.
    pub user_id: Option<&'a str>,
    /// Who did it, when that was someone else (an administrator).
    pub actor_id: Option<&'a str>,
    pub session_id: Option<Uuid>,
    pub origin: &'a Origin,
    pub detail: serde_json::Value,
}

/// Writes `event` (within the caller's transaction, when it has one).
#[tracing::instrument(level = "debug", skip_all, fields(kind = event.kind.as_str()))]
pub async fn record(db: &impl GenericClient, event: &Event<'_>) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_audit_events \
             (type, user_id, actor_id, session_id, client_address, user_agent, request_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await
        .map_err(db_error)?;
    let clean = |s: Option<&str>| s.filter(|s| storable(s)).map(str::to_string);
    db.execute(
        &stmt,
        &[
            &event.kind.as_str(),
            &clean(event.user_id),
            &clean(event.actor_id),
            &event.session_id,
            &clean(event.origin.client_address.as_deref()),
            &clean(event.origin.user_agent.as_deref()),
            &clean(event.origin.request_id.as_deref()),
            &event.detail,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// An event as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub id: i64,
    /// RFC 3339, UTC, microseconds.
    pub at: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<String>,
    pub actor_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub client_address: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub detail: serde_json::Value,
}

/// Which events a read wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub user_id: Option<String>,
    pub kind: Option<Kind>,
    pub since: Option<DateTime<Utc>>,
    /// Only events older than this one (the last of the previous page).
    pub before: Option<i64>,
}

/// At most `limit` events matching `query`, newest first; and whether more follow.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn page(
    db: &impl GenericClient,
    query: &Query,
    limit: i64,
) -> Result<(Vec<Stored>, bool), StoreError> {
    if query.user_id.as_deref().is_some_and(|u| !storable(u)) {
        return Ok((Vec::new(), false));
    }
    let stmt = db
        .prepare_cached(
            "SELECT id, to_char(at AT TIME ZONE 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), type, \
             user_id, actor_id, session_id, client_address, user_agent, request_id, detail \
             FROM sentinel_audit_events \
             WHERE ($1::text IS NULL OR user_id = $1) AND ($2::text IS NULL OR type = $2) \
             AND ($3::timestamptz IS NULL OR at >= $3) AND ($4::bigint IS NULL OR id < $4) \
             ORDER BY id DESC LIMIT $5",
        )
        .await
        .map_err(db_error)?;
    let kind = query.kind.map(Kind::as_str);
    let rows = db
        .query(
            &stmt,
            &[
                &query.user_id,
                &kind,
                &query.since,
                &query.before,
                &(limit + 1),
            ],
        )
        .await
        .map_err(db_error)?;
    let more = rows.len() as i64 > limit;
    let events = rows
        .into_iter()
        .take(limit as usize)
        .map(|row| {
            Ok(Stored {
                id: row.try_get(0)?,
                at: row.try_get(1)?,
                kind: row.try_get(2)?,
                user_id: row.try_get(3)?,
                actor_id: row.try_get(4)?,
                session_id: row.try_get(5)?,
                client_address: row.try_get(6)?,
                user_agent: row.try_get(7)?,
                request_id: row.try_get(8)?,
                detail: row.try_get(9)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(db_error)?;
    Ok((events, more))
}

/// Deletes events older than `days` days, `batch` at a time (so no statement holds many rows
/// locked); how many went.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn prune(db: &impl GenericClient, days: u32, batch: i64) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_audit_events WHERE id IN \
             (SELECT id FROM sentinel_audit_events \
              WHERE at < now() - make_interval(days => $1) LIMIT $2)",
        )
        .await
        .map_err(db_error)?;
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let gone = db
            .execute(&stmt, &[&days, &batch])
            .await
            .map_err(db_error)?;
        total += gone;
        if gone < batch as u64 {
            return Ok(total);
        }
    }
}
