//! The `users` table: one function per SQL statement. Emails are matched case-insensitively
//! (the `lower(email)` unique index), ids are the seed's UUID strings.

use chrono::NaiveDateTime;
use deadpool_postgres::{Client, GenericClient, Pool, PoolError};
use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;

use crate::store::db::describe;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
    pub full_name: Option<String>,
    pub hashed_password: String,
    /// A NULL `is_active` (never written by the seed, only by hand) counts as inactive.
    pub is_active: bool,
    /// UTC, as the seed stored it.
    pub created_at: NaiveDateTime,
    /// Whether the user proved the address is theirs (a verification link or a reset).
    pub email_verified: bool,
    /// The roles the user holds, sorted.
    pub roles: Vec<String>,
}

pub use crate::config::is_role_name;

/// The most roles one user may hold.
pub const MAX_ROLES_PER_USER: usize = 64;

pub(crate) const COLUMNS: &str =
    "id, email, full_name, hashed_password, COALESCE(is_active, false), \
                       COALESCE(created_at, updated_at, timestamp 'epoch'), email_verified, \
                       ARRAY(SELECT r.role FROM sentinel_user_roles r \
                             WHERE r.user_id = users.id ORDER BY r.role)";

impl TryFrom<Row> for User {
    type Error = tokio_postgres::Error;

    fn try_from(row: Row) -> Result<Self, Self::Error> {
        Ok(User {
            id: row.try_get(0)?,
            email: row.try_get(1)?,
            full_name: row.try_get(2)?,
            hashed_password: row.try_get(3)?,
            is_active: row.try_get(4)?,
            created_at: row.try_get(5)?,
            email_verified: row.try_get(6)?,
            roles: row.try_get(7)?,
        })
    }
}

/// `UserResponse` of the seed, field order included, and what the gateway adds after it.
#[derive(Debug, Clone, Serialize)]
pub struct UserResponse<'a> {
    pub email: &'a str,
    pub full_name: Option<&'a str>,
    pub id: &'a str,
    pub is_active: bool,
    pub created_at: String,
    pub email_verified: bool,
    /// Sorted.
    pub roles: &'a [String],
}

impl User {
    pub fn response(&self) -> UserResponse<'_> {
        UserResponse {
            email: &self.email,
            full_name: self.full_name.as_deref(),
            id: &self.id,
            is_active: self.is_active,
            created_at: timestamp(&self.created_at),
            email_verified: self.email_verified,
            roles: &self.roles,
        }
    }
}

/// RFC 3339 in UTC with microseconds, e.g. 2026-11-25T15:56:59.033749Z.
pub fn timestamp(t: &NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// [`timestamp`] of a time with its zone.
pub fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    timestamp(&t.naive_utc())
}

/// Errors of storage calls, already in the form the API answers with: 503 (and `Retry-After`)
/// when the database or this connection to it is unavailable, 500 only for a statement the
/// database could not run.
pub(crate) fn db_error(e: tokio_postgres::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(describe(&e))
    } else {
        StoreError::Internal(describe(&e))
    }
}

/// Whether an error says "not now" rather than "never": no connection, a closed one, or a
/// server answer of SQLSTATE class 08 (connection exception), 53 (insufficient resources) or
/// 40 (a transaction rolled back: serialization failure, deadlock), `57P01`–`57P03` (the server
/// shutting down or terminating the connection: `pg_terminate_backend`, a failover), `57014`
/// (cancelled, as by `database.statement_timeout_ms`) or `55P03` (lock not available). Such a
/// connection is not reused: the pool checks `is_closed` before handing one out.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    let Some(db) = e.as_db_error() else {
        return true;
    };
    let code = db.code().code();
    ["08", "53", "40"]
        .iter()
        .any(|class| code.starts_with(class))
        || matches!(code, "57P01" | "57P02" | "57P03" | "57014" | "55P03")
}

pub async fn client(pool: &Pool) -> Result<Client, StoreError> {
    pool.get().await.map_err(pool_error)
}

/// [`client`], waiting up to `wait` for a free connection (instead of the pool's own limit).
pub async fn client_waiting(pool: &Pool, wait: std::time::Duration) -> Result<Client, StoreError> {
    let mut timeouts = pool.timeouts();
    timeouts.wait = Some(wait);
    pool.timeout_get(&timeouts).await.map_err(pool_error)
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_error(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// PostgreSQL text cannot hold NUL (it refuses the parameter outright): such a key names no row.
pub(crate) fn storable(key: &str) -> bool {
    !key.contains('\0')
}

fn rows_to_user(row: Option<Row>) -> Result<Option<User>, StoreError> {
    row.map(User::try_from)
        .transpose()
        .map_err(|e| StoreError::Internal(describe(&e)))
}

#[tracing::instrument(level = "debug", skip(db))]
pub async fn find_by_id(db: &impl GenericClient, id: &str) -> Result<Option<User>, StoreError> {
    if !storable(id) {
        return Ok(None);
    }
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    rows_to_user(db.query_opt(&stmt, &[&id]).await.map_err(db_error)?)
}

/// A user with what decides which of their tokens still count: the time before which tokens
/// without a session are refused, and the live sessions with when each ends (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user: User,
    /// Rounded up to a whole second, as tokens count time.
    pub tokens_valid_after: Option<i64>,
    pub sessions: Vec<(uuid::Uuid, i64)>,
    /// Those of `sessions` that passed a second factor (`aal2`), with the methods each used
    /// (RFC 8176 names, sorted: `mfa`, `otp`, `pwd`, …).
    pub aal2_sessions: Vec<(uuid::Uuid, Vec<String>)>,
    /// Whether the user has an activated second factor.
    pub has_factor: bool,
}

/// The user with id `id` and their live sessions (with which passed a second factor) and
/// whether they have one, in one statement: at most
/// `max_sessions` of them, the most recently used (`auth.max_sessions_per_user`: a session
/// past it is refused like an ended one, and no read grows with how many a user once had).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn find_account(
    db: &impl GenericClient,
    id: &str,
    max_sessions: u32,
) -> Result<Option<Account>, StoreError> {
    if !storable(id) {
        return Ok(None);
    }
    // Both arrays list the same sessions in the same order.
    let sql = format!(
        "SELECT {COLUMNS}, ceil(extract(epoch FROM tokens_valid_after))::bigint, \
         ARRAY(SELECT s.id FROM sentinel_sessions s WHERE s.user_id = users.id \
               AND s.revoked_at IS NULL AND s.idle_expires_at > now() \
               AND s.absolute_expires_at > now() \
               ORDER BY s.last_used_at DESC, s.id LIMIT $2), \
         ARRAY(SELECT floor(extract(epoch FROM LEAST(s.idle_expires_at, s.absolute_expires_at)))::bigint \
               FROM sentinel_sessions s WHERE s.user_id = users.id \
               AND s.revoked_at IS NULL AND s.idle_expires_at > now() \
               AND s.absolute_expires_at > now() \
               ORDER BY s.last_used_at DESC, s.id LIMIT $2), \
         ARRAY(SELECT CASE WHEN s.aal >= 2 THEN array_to_string(s.amr, ',') END \
               FROM sentinel_sessions s WHERE s.user_id = users.id \
               AND s.revoked_at IS NULL AND s.idle_expires_at > now() \
               AND s.absolute_expires_at > now() \
               ORDER BY s.last_used_at DESC, s.id LIMIT $2), \
         EXISTS (SELECT 1 FROM sentinel_mfa_factors f \
                 WHERE f.user_id = users.id AND f.activated_at IS NOT NULL) \
         FROM users WHERE id = $1"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    let limit = i64::from(max_sessions);
    let Some(row) = db
        .query_opt(&stmt, &[&id, &limit])
        .await
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    let internal = |e: tokio_postgres::Error| StoreError::Internal(describe(&e));
    let tokens_valid_after: Option<i64> = row.try_get(8).map_err(internal)?;
    let ids: Vec<uuid::Uuid> = row.try_get(9).map_err(internal)?;
    let ends: Vec<i64> = row.try_get(10).map_err(internal)?;
    let raised: Vec<Option<String>> = row.try_get(11).map_err(internal)?;
    let has_factor: bool = row.try_get(12).map_err(internal)?;
    let user = User::try_from(row).map_err(internal)?;
    let aal2_sessions = ids
        .iter()
        .zip(raised)
        .filter_map(|(id, methods)| {
            let mut methods: Vec<String> = methods?.split(',').map(str::to_string).collect();
            methods.sort();
            Some((*id, methods))
        })
        .collect();
    Ok(Some(Account {
        user,
        tokens_valid_after,
        sessions: ids.into_iter().zip(ends).collect(),
        aal2_sessions,
        has_factor,
    }))
}

/// Refuses, from now on, the user's tokens that belong to no session (the seed's).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn refuse_sessionless_tokens(
    db: &impl GenericClient,
    id: &str,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached("UPDATE users SET tokens_valid_after = now() WHERE id = $1")
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id]).await.map_err(db_error)?;
    Ok(())
}

#[tracing::instrument(level = "debug", skip(db, email))]
pub async fn find_by_email(
    db: &impl GenericClient,
    email: &str,
) -> Result<Option<User>, StoreError> {
    if !storable(email) {
        return Ok(None);
    }
    let sql = format!("SELECT {COLUMNS} FROM users WHERE lower(email) = lower($1)");
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    rows_to_user(db.query_opt(&stmt, &[&email]).await.map_err(db_error)?)
}

/// Inserts a new active user; `Ok(None)` when the email (in any letter case) is taken.
#[tracing::instrument(level = "debug", skip(db, email, full_name, hashed_password))]
pub async fn insert(
    db: &impl GenericClient,
    email: &str,
    full_name: &str,
    hashed_password: &str,
) -> Result<Option<User>, StoreError> {
    let sql = format!(
        "INSERT INTO users (id, email, full_name, hashed_password, is_active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, true, now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc') \
         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    let id = uuid::Uuid::new_v4().to_string();
    match db
        .query_opt(&stmt, &[&id, &email, &full_name, &hashed_password])
        .await
    {
        Ok(row) => rows_to_user(row),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(None),
        Err(e) => Err(db_error(e)),
    }
}

/// Sets `full_name` (None clears it); `Ok(None)` when the user is gone.
#[tracing::instrument(level = "debug", skip(db, full_name))]
pub async fn update_full_name(
    db: &impl GenericClient,
    id: &str,
    full_name: Option<&str>,
) -> Result<Option<User>, StoreError> {
    let sql = format!(
        "UPDATE users SET full_name = $2, updated_at = now() AT TIME ZONE 'utc' \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    rows_to_user(
        db.query_opt(&stmt, &[&id, &full_name])
            .await
            .map_err(db_error)?,
    )
}

/// Replaces a password hash, unless it changed since `old` was read (then the newer one stays).
#[tracing::instrument(level = "debug", skip(db, old, new))]
pub async fn replace_password_hash(
    db: &impl GenericClient,
    id: &str,
    old: &str,
    new: &str,
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE users SET hashed_password = $3, updated_at = now() AT TIME ZONE 'utc' \
             WHERE id = $1 AND hashed_password = $2",
        )
        .await
        .map_err(db_error)?;
    Ok(db
        .execute(&stmt, &[&id, &old, &new])
        .await
        .map_err(db_error)?
        == 1)
}

/// Sets a new password hash after a reset: whatever the password was, the address proved
/// (`email_verified`), and every token without a session refused from now on. `Ok(None)`
/// when the user is gone or inactive.
#[tracing::instrument(level = "debug", skip(db, hash))]
pub async fn reset_password(
    db: &impl GenericClient,
    id: &str,
    hash: &str,
) -> Result<Option<User>, StoreError> {
    let sql = format!(
        "UPDATE users SET hashed_password = $2, email_verified = true, tokens_valid_after = now(), \
         updated_at = now() AT TIME ZONE 'utc' WHERE id = $1 AND is_active RETURNING {COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    rows_to_user(db.query_opt(&stmt, &[&id, &hash]).await.map_err(db_error)?)
}

/// Marks `email` verified for user `id`, if it is still their address (in any letter case).
/// `Ok(None)` when the user is gone or their address changed.
#[tracing::instrument(level = "debug", skip(db, email))]
pub async fn mark_email_verified(
    db: &impl GenericClient,
    id: &str,
    email: &str,
) -> Result<Option<User>, StoreError> {
    let sql = format!(
        "UPDATE users SET email_verified = true, updated_at = now() AT TIME ZONE 'utc' \
         WHERE id = $1 AND lower(email) = lower($2) RETURNING {COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    rows_to_user(
        db.query_opt(&stmt, &[&id, &email])
            .await
            .map_err(db_error)?,
    )
}

/// Users, newest first, at most `limit`; with `search`, only emails containing it (any case).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn list(
    db: &impl GenericClient,
    search: Option<&str>,
    role: Option<&str>,
    limit: i64,
) -> Result<Vec<User>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM users \
         WHERE ($1::text IS NULL OR strpos(lower(email), lower($1)) > 0) \
         AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM sentinel_user_roles r \
                                          WHERE r.user_id = users.id AND r.role = $3)) \
         ORDER BY created_at DESC NULLS LAST, id LIMIT $2"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    let search = search.filter(|s| storable(s));
    let role = role.filter(|r| storable(r));
    db.query(&stmt, &[&search, &limit, &role])
        .await
        .map_err(db_error)?
        .into_iter()
        .map(|row| User::try_from(row).map_err(|e| StoreError::Internal(describe(&e))))
        .collect()
}

/// Activates or deactivates a user (running gateways hear of it through the trigger).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn set_active(db: &impl GenericClient, id: &str, active: bool) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE users SET is_active = $2, updated_at = now() AT TIME ZONE 'utc' WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id, &active]).await.map_err(db_error)?;
    Ok(())
}

/// Sets a password hash, whatever the password was (an operator's `set-password`).
#[tracing::instrument(level = "debug", skip(db, hash))]
pub async fn set_password_hash(
    db: &impl GenericClient,
    id: &str,
    hash: &str,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE users SET hashed_password = $2, updated_at = now() AT TIME ZONE 'utc' \
             WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id, &hash]).await.map_err(db_error)?;
    Ok(())
}

/// Locks the user's row until the transaction ends (changes nothing, announces nothing).
pub async fn lock(db: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .await
        .map_err(db_error)?;
    db.query_opt(&stmt, &[&id]).await.map_err(db_error)?;
    Ok(())
}

/// `SELECT 1`, for readiness.
pub async fn ping(db: &Client) -> Result<(), StoreError> {
    db.simple_query("SELECT 1")
        .await
        .map_err(db_error)
        .map(|_| ())
}
