//! The `sentinel_user_roles` table (`migrations/V8__roles.sql`): which roles each user holds.
//! Every grant and revocation makes PostgreSQL announce a change of the user, so every
//! instance's cached state (and with it `X-User-Roles` and route rules) follows within a
//! second.

use deadpool_postgres::GenericClient;

use crate::store::users::db_error;
use crate::store::StoreError;

/// Grants `roles` to `user_id` (by `granted_by`, a user id, if an admin did it); the ones the
/// user did not hold yet, sorted.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn grant(
    db: &impl GenericClient,
    user_id: &str,
    roles: &[String],
    granted_by: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO sentinel_user_roles (user_id, role, granted_by) \
             SELECT $1, role, $3 FROM unnest($2::text[]) AS role \
             ON CONFLICT DO NOTHING RETURNING role",
        )
        .await
        .map_err(db_error)?;
    let rows = db
        .query(&stmt, &[&user_id, &roles, &granted_by])
        .await
        .map_err(db_error)?;
    let mut granted: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_error)?;
    granted.sort();
    Ok(granted)
}

/// Takes `roles` from `user_id`; the ones the user held, sorted.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn revoke(
    db: &impl GenericClient,
    user_id: &str,
    roles: &[String],
) -> Result<Vec<String>, StoreError> {
    let stmt = db
        .prepare_cached(
            "DELETE FROM sentinel_user_roles WHERE user_id = $1 AND role = ANY($2::text[]) \
             RETURNING role",
        )
        .await
        .map_err(db_error)?;
    let rows = db
        .query(&stmt, &[&user_id, &roles])
        .await
        .map_err(db_error)?;
    let mut revoked: Vec<String> = rows
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db_error)?;
    revoked.sort();
    Ok(revoked)
}

/// How many active users hold `role`, other than `except` (the last-admin guard asks).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn active_holders_besides(
    db: &impl GenericClient,
    role: &str,
    except: &str,
) -> Result<i64, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT count(*) FROM sentinel_user_roles r JOIN users u ON u.id = r.user_id \
             WHERE r.role = $1 AND r.user_id <> $2 AND COALESCE(u.is_active, false)",
        )
        .await
        .map_err(db_error)?;
    let row = db
        .query_one(&stmt, &[&role, &except])
        .await
        .map_err(db_error)?;
    row.try_get(0).map_err(db_error)
}
