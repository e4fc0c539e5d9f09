//! The admin API's view of the `users` table: one user with when they last signed in, and
//! pages of users in the order they were created (`migrations/V9__admin_directory.sql`), found
//! by a piece of their email or name, a role they hold, or whether they are active.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::store::db::describe;
use crate::store::users::{db_error, storable, User, COLUMNS};
use crate::store::StoreError;

/// A user as an administrator sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub user: User,
    /// The last password sign-in (`None`: never, or before the gateway kept count).
    pub last_login_at: Option<DateTime<Utc>>,
}

fn listed(row: Row) -> Result<Listed, StoreError> {
    let internal = |e: tokio_postgres::Error| StoreError::Internal(describe(&e));
    let last_login_at = row.try_get(8).map_err(internal)?;
    Ok(Listed {
        user: User::try_from(row).map_err(internal)?,
        last_login_at,
    })
}

/// Which users a page holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// A piece of the email or the full name, in any letter case.
    pub text: Option<String>,
    pub role: Option<String>,
    pub active: Option<bool>,
}

/// What a page asked for cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// `after` names no user.
    #[error("unknown cursor")]
    UnknownCursor,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// At most `limit` users matching `filter`, in creation order, starting after the user with id
/// `after`; and whether more follow.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn page(
    db: &impl GenericClient,
    filter: &Filter,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Listed>, bool), PageError> {
    let after = match after {
        None => None,
        Some(id) if !storable(id) => return Err(PageError::UnknownCursor),
        Some(id) => {
            let stmt = db
                .prepare_cached(
                    "SELECT COALESCE(created_at, timestamp 'epoch') FROM users WHERE id = $1",
                )
                .await
                .map_err(db_error)?;
            let row = db
                .query_opt(&stmt, &[&id])
                .await
                .map_err(db_error)?
                .ok_or(PageError::UnknownCursor)?;
            let created: chrono::NaiveDateTime = row.try_get(0).map_err(db_error)?;
            Some((created, id))
        }
    };
    let (after_created, after_id) = after.unzip();
    // Ordered by the index's own expression: a page is an index range, however many users.
    let sql = format!(
        "SELECT {COLUMNS}, last_login_at FROM users \
         WHERE ($1::timestamp IS NULL \
                OR (COALESCE(created_at, timestamp 'epoch'), id) > ($1::timestamp, $2::text)) \
         AND ($3::text IS NULL OR strpos(lower(email), lower($3)) > 0 \
              OR strpos(lower(COALESCE(full_name, '')), lower($3)) > 0) \
         AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM sentinel_user_roles r \
                                          WHERE r.user_id = users.id AND r.role = $4)) \
         AND ($5::boolean IS NULL OR COALESCE(is_active, false) = $5) \
         ORDER BY COALESCE(created_at, timestamp 'epoch'), id LIMIT $6"
    );
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    let text = filter.text.as_deref().filter(|t| storable(t));
    let role = filter.role.as_deref();
    let rows = db
        .query(
            &stmt,
            &[
                &after_created,
                &after_id,
                &text,
                &role,
                &filter.active,
                &(limit + 1),
            ],
        )
        .await
        .map_err(db_error)?;
    let more = rows.len() as i64 > limit;
    let users = rows
        .into_iter()
        .take(limit as usize)
        .map(listed)
        .collect::<Result<_, _>>()?;
    Ok((users, more))
}

/// The user with id `id`, as an administrator sees them.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn find(db: &impl GenericClient, id: &str) -> Result<Option<Listed>, StoreError> {
    read(db, id, "").await
}

/// The user's row, locked until the transaction ends, as an administrator sees it.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn lock(db: &impl GenericClient, id: &str) -> Result<Option<Listed>, StoreError> {
    read(db, id, " FOR UPDATE").await
}

async fn read(
    db: &impl GenericClient,
    id: &str,
    locking: &str,
) -> Result<Option<Listed>, StoreError> {
    if !storable(id) {
        return Ok(None);
    }
    let sql = format!("SELECT {COLUMNS}, last_login_at FROM users WHERE id = $1{locking}");
    let stmt = db.prepare_cached(&sql).await.map_err(db_error)?;
    db.query_opt(&stmt, &[&id])
        .await
        .map_err(db_error)?
        .map(listed)
        .transpose()
}

/// What an administrator changes of a user (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    pub is_active: Option<bool>,
    /// `Some(None)` clears it.
    pub full_name: Option<Option<String>>,
    pub email_verified: Option<bool>,
}

/// Applies `change` to the user `id` (one statement; the trigger announces it).
#[tracing::instrument(level = "debug", skip(db))]
pub async fn update(db: &impl GenericClient, id: &str, change: &Change) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "UPDATE users SET is_active = COALESCE($2, is_active), \
             full_name = CASE WHEN $3 THEN $4 ELSE full_name END, \
             email_verified = COALESCE($5, email_verified), \
             updated_at = now() AT TIME ZONE 'utc' WHERE id = $1",
        )
        .await
        .map_err(db_error)?;
    let name_set = change.full_name.is_some();
    let name = change.full_name.clone().flatten();
    db.execute(
        &stmt,
        &[
            &id,
            &change.is_active,
            &name_set,
            &name,
            &change.email_verified,
        ],
    )
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Records a password sign-in of `id` now.
#[tracing::instrument(level = "debug", skip(db))]
pub async fn signed_in(db: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached("UPDATE users SET last_login_at = now() WHERE id = $1")
        .await
        .map_err(db_error)?;
    db.execute(&stmt, &[&id]).await.map_err(db_error)?;
    Ok(())
}

/// Serialises changes that could leave no active holder of an administrator role (two admins
/// demoting each other at once): held until the transaction ends.
pub async fn lock_admins(db: &impl GenericClient) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtext('sentinel_admin_role'))")
        .await
        .map_err(db_error)?;
    db.query_one(&stmt, &[]).await.map_err(db_error)?;
    Ok(())
}
