//! The `sentinel_account_tokens` table (`migrations/V5__account_lifecycle.sql`): the hashes of
//! password-reset and email-verification tokens, one function per statement.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use crate::store::users::db_error;
use crate::store::StoreError;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    PasswordReset,
    VerifyEmail,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::PasswordReset => "password_reset",
            Purpose::VerifyEmail => "verify_email",
        }
    }
}

/// How many tokens of `purpose` were issued to `user_id` in the last minute and the last hour
/// (ended or not), for the per-account limits.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn recent(
    db: &impl GenericClient,
    user_id: &str,
    purpose: Purpose,
) -> Result<(i64, i64), StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE created_at > now() - interval '1 minute'), count(*) \
             FROM sentinel_account_tokens \
             WHERE user_id = $1 AND purpose = $2 AND created_at > now() - interval '1 hour'",
        )
        .await
        .map_err(db_error)?;
    let row = db
        .query_one(&stmt, &[&user_id, &purpose.as_str()])
        .await
        .map_err(db_error)?;
    Ok((
        row.try_get(0).map_err(db_error)?,
        row.try_get(1).map_err(db_error)?,
    ))
}

/// Stores a new token's hash for `user_id` at `email`, lasting `lifetime`, and ends the user's
/// earlier tokens of the same purpose (a newer link voids the older ones).
#[tracing::instrument(level = "debug", skip(db, token_hash, email))]
pub async fn issue(
    db: &impl GenericClient,
    token_hash: &[u8],
    user_id: &str,
    email: &str,
    purpose: Purpose,
    lifetime: Duration,
) -> Result<(), StoreError> {
    end_all(db, user_id, purpose).await?;
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_account_tokens (token_hash, user_id, purpose, email, expires_at) \
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .await
        .map_err(db_error)?;
    db.execute(
        &stmt,
        &[
            &token_hash,
            &user_id,
            &purpose.as_str(),
            &email,
            &lifetime.as_secs_f64(),
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Ends every live token of `purpose` that `user_id` holds.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn end_all(
    db: &impl GenericClient,
    user_id: &str,
    purpose: Purpose,
) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_account_tokens SET ended_at = now() \
             WHERE user_id = $1 AND purpose = $2 AND ended_at IS NULL",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&user_id, &purpose.as_str()])
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Whom a live token of `purpose` belongs to (user id, and the address it was sent to),
/// without using it up.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn holder(
    db: &impl GenericClient,
    token_hash: &[u8],
    purpose: Purpose,
) -> Result<Option<(String, String)>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT user_id, email FROM sentinel_account_tokens \
             WHERE token_hash = $1 AND purpose = $2 AND ended_at IS NULL AND expires_at > now()",
        )
        .await
        .map_err(db_error)?;
    let row = db
        .query_opt(&stmt, &[&token_hash, &purpose.as_str()])
        .await
        .map_err(db_error)?;
    holder_of(row)
}

/// Uses up a live token of `purpose`: its user id and address, or `None` when it is unknown,
/// used, voided or expired. Of two concurrent uses, one gets it.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn consume(
    db: &impl GenericClient,
    token_hash: &[u8],
    purpose: Purpose,
) -> Result<Option<(String, String)>, StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE sentinel_account_tokens SET ended_at = now() \
             WHERE token_hash = $1 AND purpose = $2 AND ended_at IS NULL AND expires_at > now() \
             RETURNING user_id, email",
        )
        .await
        .map_err(db_error)?;
    let row = db
        .query_opt(&stmt, &[&token_hash, &purpose.as_str()])
        .await
        .map_err(db_error)?;
    holder_of(row)
}

/// (user id, address) of a row that starts with them.
fn holder_of(row: Option<tokio_postgres::Row>) -> Result<Option<(String, String)>, StoreError> {
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .transpose()
        .map_err(db_error)
}

/// Deletes tokens that ended or expired more than a day ago; how many.
pub async fn prune(db: &impl GenericClient) -> Result<u64, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_account_tokens \
             WHERE COALESCE(ended_at, expires_at) < now() - interval '1 day' \
             OR expires_at < now() - interval '1 day'",
        )
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[]).await.map_err(db_error)
}
