//! Second factors (`sentinel_mfa_factors`), recovery codes (`sentinel_recovery_codes`) and
//! sessions' assurance levels (`migrations/V11__mfa.sql`). Each change that bears on what a
//! session may do is announced by a trigger (a factor activated or removed, a session raised),
//! so every instance reads the user again within a second.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use uuid::Uuid;

use crate::store::users::db_error;
use crate::store::StoreError;

/// A factor as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factor {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub sealed_secret: Option<Vec<u8>>,
    pub key_id: Option<i16>,
    pub created_at: DateTime<Utc>,
    pub active: bool,
    pub last_used_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, type, name, sealed_secret, key_id, created_at, \
                       activated_at IS NOT NULL, last_used_at";

fn factor(row: &tokio_postgres::Row) -> Result<Factor, StoreError> {
    Ok(Factor {
        id: row.try_get(0).map_err(db_error)?,
        kind: row.try_get(1).map_err(db_error)?,
        name: row.try_get(2).map_err(db_error)?,
        sealed_secret: row.try_get(3).map_err(db_error)?,
        key_id: row.try_get(4).map_err(db_error)?,
        created_at: row.try_get(5).map_err(db_error)?,
        active: row.try_get(6).map_err(db_error)?,
        last_used_at: row.try_get(7).map_err(db_error)?,
    })
}

/// A new TOTP factor of `user_id`, not yet active.
#[tracing::instrument(level = "debug", skip(db, sealed_secret))]
pub async fn insert_totp(
    db: &impl GenericClient,
    id: &Uuid,
    user_id: &str,
    name: &str,
    sealed_secret: &[u8],
    key_id: i16,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_mfa_factors (id, user_id, type, name, sealed_secret, key_id) \
             VALUES ($1, $2, 'totp', $3, $4, $5)",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[id, &user_id, &name, &sealed_secret, &key_id])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The factor `id` of `user_id` (anyone else's is none).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn find(
    db: &impl GenericClient,
    user_id: &str,
    id: &Uuid,
) -> Result<Option<Factor>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM sentinel_mfa_factors WHERE id = $1 AND user_id = $2");
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    db.query_opt(&stmt, &[id, &user_id])
        .await
        .map_err(db_error)?
        .as_ref()
        .map(factor)
        .transpose()
}

/// The user's factors, oldest first (`active_only`: those activated).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn list(
    db: &impl GenericClient,
    user_id: &str,
    active_only: bool,
) -> Result<Vec<Factor>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM sentinel_mfa_factors WHERE user_id = $1 \
         AND ($2 = false OR activated_at IS NOT NULL) ORDER BY created_at, id"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    db.query(&stmt, &[&user_id, &active_only])
        .await
        .map_err(db_error)?
        .iter()
        .map(factor)
        .collect()
}

/// Accepts TOTP time step `step` for factor `id`, once: only if it is later than the last
/// step accepted (one statement, so two uses of one code cannot both pass). `activate`: the
/// factor becomes active by this (it must not be already); otherwise it must be.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn accept_step(
    db: &impl GenericClient,
    id: &Uuid,
    step: i64,
    activate: bool,
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_mfa_factors SET last_step = $2, last_used_at = now(), \
             activated_at = COALESCE(activated_at, CASE WHEN $3 THEN now() END) \
             WHERE id = $1 AND last_step < $2 AND (activated_at IS NULL) = $3",
        )
        .await
        .map_err(db_error)?;
    Ok(db
        .execute(&stmt, &[id, &step, &activate])
        .await
        .map_err(db_error)?
        == 1)
}

/// Replaces the user's recovery codes by these (hashes).
#[tracing::instrument(level = "debug", skip_all)]
pub async fn replace_recovery_codes(
    db: &impl GenericClient,
    user_id: &str,
    hashes: &[Vec<u8>],
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached("DELETE FROM sentinel_recovery_codes WHERE user_id = $1")
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id]).await.map_err(db_error)?;
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_recovery_codes (user_id, code_hash) \
             SELECT $1, h FROM unnest($2::bytea[]) AS h ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id, &hashes])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Uses the recovery code with hash `hash`, once.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn use_recovery_code(
    db: &impl GenericClient,
    user_id: &str,
    hash: &[u8],
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_recovery_codes SET used_at = now() \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    Ok(db
        .execute(&stmt, &[&user_id, &hash])
        .await
        .map_err(db_error)?
        == 1)
}

/// How many of the user's recovery codes are unused.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn recovery_codes_left(
    db: &impl GenericClient,
    user_id: &str,
) -> Result<i64, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM sentinel_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    db.query_one(&stmt, &[&user_id])
        .await
        .map_err(db_error)?
        .try_get(0)
        .map_err(db_error)
}

/// Raises session `session_id` of `user_id` to `aal2`, adding `method` (RFC 8176: `otp`,
/// `hwk`) and `mfa` to the methods it used. `false` when the session is not live.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn raise(
    db: &impl GenericClient,
    user_id: &str,
    session_id: &Uuid,
    method: &str,
) -> Result<bool, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_sessions SET aal = 2, \
             amr = ARRAY(SELECT DISTINCT m FROM unnest(amr || ARRAY[$3::text, 'mfa']) AS m ORDER BY m) \
             WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    Ok(db
        .execute(&stmt, &[session_id, &user_id, &method])
        .await
        .map_err(db_error)?
        == 1)
}

/// Deletes the user's factors that were enrolled over an hour ago and never activated.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn drop_stale_pending(db: &impl GenericClient, user_id: &str) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_mfa_factors WHERE user_id = $1 AND activated_at IS NULL \
             AND created_at < now() - interval '1 hour'",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id]).await.map_err(db_error)?;
    Ok(())
}

/// Deletes factor `id` of `user_id`; what it was, if it was theirs.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn remove(
    db: &impl GenericClient,
    user_id: &str,
    id: &Uuid,
) -> Result<Option<Factor>, StoreError> {
    let sql = format!(
        "DELETE FROM sentinel_mfa_factors WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    db.query_opt(&stmt, &[id, &user_id])
        .await
        .map_err(db_error)?
        .as_ref()
        .map(factor)
        .transpose()
}

/// Deletes every factor and recovery code of `user_id` (an administrator's reset); how many
/// factors went.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn remove_all(db: &impl GenericClient, user_id: &str) -> Result<u64, StoreError> {
    replace_recovery_codes(db, user_id, &[]).await?;
    let stmt = db
        .prepare_cached("DELETE FROM sentinel_mfa_factors WHERE user_id = $1")
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id]).await.map_err(db_error)
}
